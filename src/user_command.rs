//! `bramble user`: people with client certificates. `add` makes a key here, has the cluster
//! CA sign it through the CSR API (signer `kubernetes.io/kube-apiserver-client`) and writes a
//! kubeconfig; `list` shows the certificates issued; `revoke` puts them on the revocation
//! list the master checks at every request (`kube-system/bramble-revoked-certificates`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, Subcommand};
use protocol::client::Client;
use serde_json::{json, Value};

const SIGNER: &str = "kubernetes.io/kube-apiserver-client";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
/// The revocation list (see the master's `auth/revocation.rs`).
const REVOKED: &str = "/api/v1/namespaces/kube-system/configmaps/bramble-revoked-certificates";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

#[derive(Args)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
    /// The administrator's kubeconfig (default: $KUBECONFIG, ./.bramble/admin.kubeconfig,
    /// /var/lib/bramble/admin.kubeconfig, ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Give someone a client certificate and a kubeconfig to use it.
    ///
    /// The key never leaves this machine: a certificate request is sent, approved and signed
    /// by the cluster CA. The user is NAME, each --group a group (system:masters is refused:
    /// give admins a role instead). With --role the user also gets that ClusterRole in
    /// --namespace (a RoleBinding), or in the whole cluster without --namespace:
    ///
    ///   bramble user add alice --group team --namespace team-a --role edit -o alice.kubeconfig
    ///   kubectl --kubeconfig alice.kubeconfig auth whoami
    ///   kubectl --kubeconfig alice.kubeconfig get pods
    #[command(verbatim_doc_comment)]
    Add(AddArgs),
    /// Show the client certificates the cluster has issued: user, groups, serial, expiry,
    /// and whether each was revoked.
    ///
    ///   bramble user list
    #[command(verbatim_doc_comment)]
    List,
    /// Revoke every certificate of a user, or one by serial; the master refuses them (401) at
    /// the next request, open connections included. Role bindings are kept:
    ///
    ///   bramble user revoke alice
    ///   bramble user revoke --serial 3f2a9c...
    ///   kubectl delete rolebinding -n team-a bramble-user:alice:edit
    #[command(verbatim_doc_comment)]
    Revoke(RevokeArgs),
}

#[derive(Args)]
struct AddArgs {
    /// The user name (the certificate's common name).
    name: String,
    /// A group (the certificate's organization); repeat for more.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// The kubeconfig's namespace, and where --role applies.
    #[arg(long)]
    namespace: Option<String>,
    /// A ClusterRole to bind: edit, view, admin or any other.
    #[arg(long)]
    role: Option<String>,
    /// How long the certificate lasts (at most a year, at least 10 minutes).
    #[arg(long, default_value = "8760h", value_parser = protocol::chaos::parse_duration)]
    expires: Duration,
    /// Where to write the user's kubeconfig (default NAME.kubeconfig).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct RevokeArgs {
    /// The user whose certificates to revoke.
    #[arg(required_unless_present = "serial", conflicts_with = "serial")]
    name: Option<String>,
    /// Revoke only the certificate with this serial number (hex, as `bramble user list`).
    #[arg(long)]
    serial: Option<String>,
}

/// Runs `bramble user`.
pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    let kubeconfig = args.kubeconfig.or_else(tui::default_kubeconfig).context(
        "no kubeconfig: pass --kubeconfig FILE (a local cluster's is .bramble/admin.kubeconfig)",
    )?;
    let client = Client::from_kubeconfig(&kubeconfig)?;
    match args.command {
        UserCommand::Add(add) => add_user(&client, &kubeconfig, add).await,
        UserCommand::List => list_users(&client).await,
        UserCommand::Revoke(revoke) => revoke_user(&client, revoke).await,
    }
}

/// A name fit for an object name: lower case, other characters as `-`.
fn object_name_part(name: &str) -> String {
    let part: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    part.trim_matches('-').chars().take(40).collect()
}

async fn add_user(
    client: &Arc<Client>,
    admin_kubeconfig: &Path,
    add: AddArgs,
) -> anyhow::Result<()> {
    if add.name.is_empty() {
        bail!("the user needs a name");
    }
    let key = rcgen::KeyPair::generate().context("generating the user's key")?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, add.name.as_str());
    for group in &add.groups {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, group.as_str());
    }
    let request = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .context("making the certificate request")?;
    let request = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": format!("bramble-user-{}-", object_name_part(&add.name))},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request),
            "signerName": SIGNER,
            "usages": ["digital signature", "client auth"],
            "expirationSeconds": add.expires.as_secs(),
        },
    });
    let created = client
        .create(CSRS, &request)
        .await
        .context("sending the certificate request")?;
    let csr_name = created["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = format!("{CSRS}/{csr_name}");
    let mut approved = created.clone();
    approved["status"]["conditions"] = json!([{
        "type": "Approved",
        "status": "True",
        "reason": "BrambleUserAdd",
        "message": "This CSR was approved by bramble user add.",
    }]);
    client
        .replace(&format!("{path}/approval"), &approved)
        .await
        .context("approving the certificate request")?;
    let certificate = wait_for_certificate(client, &path).await?;

    let (server, ca_data) = cluster_of(admin_kubeconfig)?;
    let namespace = add.namespace.clone().unwrap_or_else(|| "default".into());
    let output = add
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.kubeconfig", object_name_part(&add.name))));
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: bramble
  cluster:
    server: {server}
    certificate-authority-data: {ca_data}
users:
- name: {user}
  user:
    client-certificate-data: {certificate}
    client-key-data: {key}
contexts:
- name: {user}@bramble
  context:
    cluster: bramble
    user: {user}
    namespace: {namespace}
current-context: {user}@bramble
",
        user = yaml_string(&add.name),
        certificate = encode(&certificate),
        key = encode(key.serialize_pem().as_bytes()),
    );
    write_private(&output, kubeconfig.as_bytes())?;
    let info = certificate_info(&certificate);
    println!(
        "certificate for user {:?}{} issued by the cluster CA (serial {}, expires {})",
        add.name,
        if add.groups.is_empty() {
            String::new()
        } else {
            format!(" in groups {}", add.groups.join(", "))
        },
        info.as_ref().map(|i| i.serial.as_str()).unwrap_or("?"),
        info.as_ref().map(|i| i.not_after.as_str()).unwrap_or("?"),
    );
    println!("kubeconfig written to {} (mode 0600)", output.display());
    if let Some(role) = &add.role {
        bind_role(client, &add.name, role, add.namespace.as_deref()).await?;
    } else {
        println!("no role bound: the user can authenticate but may do nothing yet (add --role edit, or bind one with kubectl create rolebinding)");
    }
    println!(
        "use it: kubectl --kubeconfig {} auth whoami",
        output.display()
    );
    println!("revoke it: bramble user revoke {}", add.name);
    Ok(())
}

/// A YAML scalar for `text`, quoted when plain style could misread it.
fn yaml_string(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !text.is_empty()
    {
        text.to_owned()
    } else {
        serde_json::to_string(text).expect("strings serialize")
    }
}

async fn wait_for_certificate(client: &Client, path: &str) -> anyhow::Result<Vec<u8>> {
    for _ in 0..150 {
        let csr = client.get(path).await?;
        if let Some(encoded) = csr["status"]["certificate"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            return base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .context("the issued certificate is not base64");
        }
        let conditions = csr["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(failed) = conditions
            .iter()
            .find(|c| c["type"] == "Failed" || c["type"] == "Denied")
        {
            bail!(
                "the certificate request was {}: {}",
                failed["type"].as_str().unwrap_or_default().to_lowercase(),
                failed["message"].as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the cluster did not sign the certificate request {path} within 30 seconds")
}

/// The server and CA data (base64) of the admin kubeconfig's current cluster.
fn cluster_of(kubeconfig: &Path) -> anyhow::Result<(String, String)> {
    let context = protocol::client::KubeconfigContext::read(kubeconfig)?;
    Ok((
        context.server,
        base64::engine::general_purpose::STANDARD.encode(context.ca_pem),
    ))
}

/// Writes a file only its owner can read (it holds a private key).
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode through `open`: tighten it.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

async fn bind_role(
    client: &Client,
    user: &str,
    role: &str,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    let name = format!("bramble-user:{user}:{role}");
    let (kind, path) = match namespace {
        Some(ns) => (
            "RoleBinding",
            format!("{RBAC}/namespaces/{ns}/rolebindings"),
        ),
        None => ("ClusterRoleBinding", format!("{RBAC}/clusterrolebindings")),
    };
    let mut binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "labels": {"bramble.dev/user": object_name_part(user)}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    });
    if let Some(ns) = namespace {
        binding["metadata"]["namespace"] = json!(ns);
    }
    match client.create(&path, &binding).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(409) => {
            println!("{kind} {name} already exists: kept");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("creating {kind} {name}")),
    }
    match namespace {
        Some(ns) => println!("{kind} {name} gives {user:?} ClusterRole {role} in namespace {ns}"),
        None => println!("{kind} {name} gives {user:?} ClusterRole {role} in every namespace"),
    }
    Ok(())
}

/// What `list` and `revoke` read from an issued certificate.
struct CertificateInfo {
    user: String,
    groups: Vec<String>,
    /// Lower-case hex without leading zeros, as the revocation list names it.
    serial: String,
    not_after: String,
    expired: bool,
}

fn certificate_info(pem: &[u8]) -> Option<CertificateInfo> {
    let block = x509_parser::pem::Pem::iter_from_buffer(pem).next()?.ok()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&block.contents).ok()?;
    let subject = certificate.subject();
    let hex = hex_of(certificate.raw_serial());
    let not_after = certificate.validity().not_after;
    Some(CertificateInfo {
        user: subject
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect::<Vec<_>>()
            .join(","),
        groups: subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect(),
        serial: hex,
        not_after: jiff::Timestamp::from_second(not_after.timestamp())
            .map(|t| t.to_string())
            .unwrap_or_default(),
        expired: !certificate.validity().is_valid(),
    })
}

fn hex_of(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Every certificate issued through the CSR API for the API server client signer, with the
/// name of its request.
async fn issued_certificates(client: &Client) -> anyhow::Result<Vec<(String, CertificateInfo)>> {
    let list = client
        .get(CSRS)
        .await
        .context("listing certificate requests")?;
    let mut issued = Vec::new();
    for csr in list["items"].as_array().into_iter().flatten() {
        if csr["spec"]["signerName"] != SIGNER {
            continue;
        }
        let Some(pem) = csr["status"]["certificate"]
            .as_str()
            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
        else {
            continue;
        };
        if let Some(info) = certificate_info(&pem) {
            let name = csr["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            issued.push((name, info));
        }
    }
    Ok(issued)
}

async fn revocation_list(client: &Client) -> anyhow::Result<Option<Value>> {
    match client.get(REVOKED).await {
        Ok(list) => Ok(Some(list)),
        Err(e) if e.code() == Some(404) => Ok(None),
        Err(e) => Err(e).context("reading the revocation list"),
    }
}

async fn list_users(client: &Client) -> anyhow::Result<()> {
    let issued = issued_certificates(client).await?;
    let revoked = revocation_list(client).await?.unwrap_or_default();
    if issued.is_empty() {
        println!("no client certificates issued (bramble user add NAME makes one)");
        return Ok(());
    }
    let rows: Vec<[String; 6]> = issued
        .iter()
        .map(|(request, info)| {
            let state = if revoked["data"].get(&info.serial).is_some() {
                "revoked"
            } else if info.expired {
                "expired"
            } else {
                "valid"
            };
            [
                info.user.clone(),
                if info.groups.is_empty() {
                    "<none>".to_owned()
                } else {
                    info.groups.join(",")
                },
                info.serial.clone(),
                info.not_after.clone(),
                state.to_owned(),
                request.clone(),
            ]
        })
        .collect();
    let header = ["USER", "GROUPS", "SERIAL", "EXPIRES", "STATE", "REQUEST"];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    Ok(())
}

async fn revoke_user(client: &Client, revoke: RevokeArgs) -> anyhow::Result<()> {
    let issued = issued_certificates(client).await?;
    let targets: Vec<&CertificateInfo> = match (&revoke.name, &revoke.serial) {
        (_, Some(serial)) => {
            let serial = hex_of(
                &(0..serial.len())
                    .step_by(2)
                    .filter_map(|i| {
                        let text = serial.replace(':', "");
                        text.get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                    })
                    .collect::<Vec<u8>>(),
            );
            let found: Vec<_> = issued
                .iter()
                .map(|(_, i)| i)
                .filter(|i| i.serial == serial)
                .collect();
            if found.is_empty() {
                bail!("no issued certificate has serial {serial} (see bramble user list)");
            }
            found
        }
        (Some(name), None) => {
            let found: Vec<_> = issued
                .iter()
                .map(|(_, i)| i)
                .filter(|i| &i.user == name)
                .collect();
            if found.is_empty() {
                bail!("no issued certificate names user {name:?} (see bramble user list)");
            }
            found
        }
        (None, None) => bail!("name a user or pass --serial"),
    };
    let revoked_by = "bramble user revoke";
    let at = protocol::client::now_time();
    let mut data = serde_json::Map::new();
    for info in &targets {
        let record = json!({
            "user": info.user,
            "groups": info.groups,
            "notAfter": info.not_after,
            "revokedAt": at,
            "revokedBy": revoked_by,
        });
        data.insert(info.serial.clone(), json!(record.to_string()));
    }
    match revocation_list(client).await? {
        Some(_) => {
            client
                .merge_patch(REVOKED, &json!({"data": data}))
                .await
                .context("updating the revocation list")?;
        }
        None => {
            let list = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "bramble-revoked-certificates", "namespace": "kube-system"},
                "data": data,
            });
            client
                .create("/api/v1/namespaces/kube-system/configmaps", &list)
                .await
                .context("creating the revocation list")?;
        }
    }
    for info in &targets {
        println!(
            "revoked certificate {} of user {:?} (expires {})",
            info.serial, info.user, info.not_after
        );
    }
    println!("the master refuses them from the next request on; role bindings were kept (kubectl get rolebindings,clusterrolebindings -A -l bramble.dev/user)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_hex_without_leading_zeros_and_names_fit_objects() {
        assert_eq!(hex_of(&[0x00, 0x0a, 0xbc]), "abc");
        assert_eq!(hex_of(&[0]), "0");
        assert_eq!(
            object_name_part("Alice Smith@example"),
            "alice-smith-example"
        );
        assert_eq!(yaml_string("alice"), "alice");
        assert_eq!(yaml_string("a: b"), "\"a: b\"");
    }

    #[test]
    fn an_issued_certificate_tells_its_user_groups_and_serial() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "team");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0x02]));
        let pem = params.self_signed(&key).unwrap().pem();
        let info = certificate_info(pem.as_bytes()).unwrap();
        assert_eq!(
            (info.user.as_str(), info.groups, info.serial.as_str()),
            ("alice", vec!["team".to_owned()], "102")
        );
        assert!(!info.expired);
    }
}
