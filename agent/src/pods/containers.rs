//! Starting a container (image pull, environment, mounts, user, limits) and the restart
//! back-off between attempts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use tokio::time::Instant;

use crate::image::{Credentials, PullPolicy, Reference};
use crate::pod_config::{container_env, volume_mounts, ObjectSource, PodFacts};
use crate::runtime::containers::Attempt;
use crate::runtime::monitor::Exited;
use crate::runtime::spec::{capabilities, resolve_args, BindMount, ContainerPlan};
use crate::volumes::PreparedVolume;
use protocol::quantity;

use super::error::StartError;
use super::security::{
    apparmor_profile, effective, identity, image_user, pod_sysctls, seccomp_choice,
    verify_run_as_non_root, ImageAccounts,
};
use super::worker::{host_network, namespace, pod_hostname, spec, PodWorker, Waiting};

/// The longest restart or image pull back-off.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long starts its next back-off from the beginning.
const SUCCESS_RESET: Duration = Duration::from_secs(600);
/// The first image pull back-off.
const PULL_BACKOFF: Duration = Duration::from_secs(5);
/// How soon a worker looks again after starting a container (to begin probing it).
const START_SETTLE: Duration = Duration::from_millis(200);
/// kubelet's pod-worker back-off after a sync error: a container that could not be
/// configured or created is tried again this much later.
const CREATE_RETRY: Duration = Duration::from_secs(10);

/// The restart delay after `restarts` restarts, kubelet-style: 10 s doubling to 5 min, back to
/// the start after a run of ten minutes.
pub fn restart_delay(base: Duration, restarts: u32, last_run: Duration) -> Duration {
    if last_run >= SUCCESS_RESET || restarts == 0 {
        return if restarts == 0 { Duration::ZERO } else { base };
    }
    let factor = 1u32 << restarts.saturating_sub(1).min(10);
    (base * factor).min(MAX_BACKOFF)
}

fn parse_time(text: &str) -> Option<jiff::Timestamp> {
    text.parse().ok()
}

impl PodWorker {
    /// How long the container must still wait before its next start, if at all; sets the
    /// CrashLoopBackOff waiting reason meanwhile.
    pub(super) fn backoff_left(
        &mut self,
        name: &str,
        attempt: &Attempt,
        exited: &Exited,
    ) -> Option<Duration> {
        let finished = parse_time(&exited.finished_at)?;
        let ran = parse_time(&exited.started_at)
            .map(|s| Duration::try_from(finished.duration_since(s)).unwrap_or_default())
            .unwrap_or_default();
        let delay = restart_delay(self.ctx.crash_backoff, attempt.number + 1, ran);
        let elapsed =
            Duration::try_from(self.ctx.clock.now().duration_since(finished)).unwrap_or_default();
        if elapsed >= delay {
            return None;
        }
        let message = format!(
            "back-off {}s restarting failed container={name} pod={}",
            delay.as_secs(),
            self.uid
        );
        self.waiting
            .insert(name.to_owned(), Waiting::CrashLoopBackOff { message });
        Some(delay - elapsed)
    }

    /// Starts a container; returns how soon the worker should look again: at once to probe
    /// it or to show a pull back-off, after kubelet's 10 s when it could not be created.
    pub(super) async fn start(
        &mut self,
        pod: &Pod,
        container: &Container,
        number: u32,
        volumes: &HashMap<String, PreparedVolume>,
        objects: &mut ObjectSource<'_>,
    ) -> Duration {
        let name = &container.name;
        match self
            .try_start(pod, container, number, volumes, objects)
            .await
        {
            Ok(()) => {
                self.waiting.remove(name);
                self.event(
                    pod,
                    "Normal",
                    "Started",
                    &format!("Started container {name}"),
                )
                .await;
                START_SETTLE
            }
            Err(error) => {
                self.event(pod, "Warning", error.event_reason(), &error.event_message())
                    .await;
                let next = match error.retried_later() {
                    true => CREATE_RETRY,
                    false => START_SETTLE,
                };
                self.waiting
                    .insert(name.clone(), Waiting::StartFailed(error));
                next
            }
        }
    }

    async fn pull_secrets(
        &self,
        pod: &Pod,
        objects: &mut ObjectSource<'_>,
    ) -> HashMap<String, Credentials> {
        let mut credentials = HashMap::new();
        for secret in spec(pod).image_pull_secrets.iter().flatten() {
            let Ok(Some(data)) = objects.data("secrets", &secret.name).await else {
                continue;
            };
            let Some(config) = data
                .get(".dockerconfigjson")
                .or_else(|| data.get(".dockercfg"))
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            else {
                continue;
            };
            let auths = config.get("auths").unwrap_or(&config);
            for (host, entry) in auths.as_object().into_iter().flatten() {
                let host = host
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let (username, password) =
                    match (entry["username"].as_str(), entry["password"].as_str()) {
                        (Some(u), Some(p)) => (u.to_owned(), p.to_owned()),
                        _ => {
                            use base64::Engine;
                            let decoded = base64::engine::general_purpose::STANDARD
                                .decode(entry["auth"].as_str().unwrap_or(""))
                                .unwrap_or_default();
                            let text = String::from_utf8_lossy(&decoded).into_owned();
                            match text.split_once(':') {
                                Some((u, p)) => (u.to_owned(), p.to_owned()),
                                None => continue,
                            }
                        }
                    };
                let host = if host == "index.docker.io" {
                    "docker.io".to_owned()
                } else {
                    host
                };
                credentials.insert(host, Credentials { username, password });
            }
        }
        credentials
    }

    async fn try_start(
        &mut self,
        pod: &Pod,
        container: &Container,
        number: u32,
        volumes: &HashMap<String, PreparedVolume>,
        objects: &mut ObjectSource<'_>,
    ) -> Result<(), StartError> {
        let name = &container.name;
        let image_name = container.image.as_deref().unwrap_or("");
        let reference = Reference::parse(image_name)
            .map_err(|problem| StartError::InvalidImageName { problem })?;
        let policy = PullPolicy::for_container(container.image_pull_policy.as_deref(), &reference);
        if let Some((until, delay)) = self.pull_backoff.get(name) {
            if Instant::now() < *until {
                return Err(StartError::PullBackOff {
                    image: image_name.to_owned(),
                    delay: *delay,
                });
            }
        }
        let credentials = self.pull_secrets(pod, objects).await;
        if !self.ctx.images.present(image_name) {
            self.event(
                pod,
                "Normal",
                "Pulling",
                &format!("Pulling image \"{image_name}\""),
            )
            .await;
        }
        let pulled = Instant::now();
        let image = match self
            .ctx
            .images
            .ensure(image_name, policy, &credentials)
            .await
        {
            Ok(image) => {
                self.pull_backoff.remove(name);
                image
            }
            Err(source) => {
                let delay = self
                    .pull_backoff
                    .get(name)
                    .map(|(_, d)| (*d * 2).min(MAX_BACKOFF))
                    .unwrap_or(PULL_BACKOFF);
                self.pull_backoff
                    .insert(name.clone(), (Instant::now() + delay, delay));
                return Err(StartError::Pull {
                    image: image_name.to_owned(),
                    source,
                });
            }
        };
        if pulled.elapsed() > Duration::from_millis(500) {
            self.event(
                pod,
                "Normal",
                "Pulled",
                &format!(
                    "Successfully pulled image \"{image_name}\" in {:.1}s",
                    pulled.elapsed().as_secs_f64()
                ),
            )
            .await;
        }
        self.image_ids.insert(name.clone(), image.digest.clone());
        self.ctx.services.wait_synced().await;
        let service_links = spec(pod).enable_service_links != Some(false);
        let facts = PodFacts {
            pod,
            pod_ip: self.pod_ip_text(pod),
            host_ip: self.ctx.node_ip.to_string(),
            service_env: self.ctx.services.env(namespace(pod), service_links),
        };
        let mut env = container_env(container, &image.config.env, &facts, objects).await?;
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={}", super::worker::name(pod)));
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        let vars: Vec<(String, String)> = env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut mounts = volume_mounts(container, volumes, &vars)?;
        mounts.extend(self.etc_files(pod)?);
        let expand_all = |items: &Option<Vec<String>>| -> Vec<String> {
            items
                .iter()
                .flatten()
                .map(|s| crate::runtime::spec::expand(s, &vars))
                .collect()
        };
        let args = resolve_args(
            &expand_all(&container.command),
            &expand_all(&container.args),
            &image.config.entrypoint,
            &image.config.cmd,
        );
        if args.is_empty() {
            return Err(StartError::NoCommand);
        }
        let layers: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|l| self.ctx.images.layer_dir(l))
            .collect();
        let security = effective(pod, container);
        let (image_uid, image_username) = image_user(&image.config.user);
        verify_run_as_non_root(pod, container, &security, image_uid, &image_username)
            .map_err(StartError::Security)?;
        let accounts = ImageAccounts::read(&layers);
        let user =
            identity(pod, &security, &image.config.user, &accounts).map_err(StartError::Create)?;
        let privileged = security.privileged == Some(true);
        let (add, drop) = security
            .capabilities
            .as_ref()
            .map(|c| {
                (
                    c.add.clone().unwrap_or_default(),
                    c.drop.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_default();
        let capabilities = capabilities(
            &add,
            &drop,
            privileged,
            &crate::runtime::spec::all_capabilities(),
        );
        let settings = &self.ctx.security;
        let seccomp = if privileged {
            None
        } else {
            let choice = seccomp_choice(pod, container, settings.seccomp_default);
            crate::seccomp::resolve(&choice, &capabilities, &settings.seccomp_dir)
                .map_err(StartError::Create)?
        };
        let apparmor = apparmor_profile(pod, container, privileged, settings.apparmor_enabled)
            .map_err(StartError::Create)?;
        let resources = container.resources.as_ref();
        let quantity = |requests: bool, resource: &str| {
            let section = match requests {
                true => resources.and_then(|r| r.requests.as_ref()),
                false => resources.and_then(|r| r.limits.as_ref()),
            };
            section
                .and_then(|s| s.get(resource))
                .and_then(|q| quantity::parse(&q.0))
        };
        let plan = ContainerPlan {
            args,
            env,
            cwd: container
                .working_dir
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(&image.config.working_dir)
                .to_owned(),
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.groups.clone(),
            rootfs: PathBuf::new(),
            pod_namespaces: crate::runtime::sandbox::namespaces(&self.dir),
            mounts,
            cgroup_path: String::new(),
            memory_limit: quantity(false, "memory").map(|m| m as i64),
            cpu_limit_millis: quantity(false, "cpu").map(|c| (c * 1000.0).ceil() as i64),
            cpu_request_millis: quantity(true, "cpu")
                .or(quantity(false, "cpu"))
                .map(|c| (c * 1000.0).ceil() as i64)
                .unwrap_or(2),
            terminal: container.tty == Some(true),
            privileged,
            capabilities,
            no_new_privileges: security.allow_privilege_escalation == Some(false),
            read_only_root: security.read_only_root_filesystem == Some(true),
            unmasked_proc: security.proc_mount.as_deref() == Some("Unmasked"),
            seccomp,
            sysctls: pod_sysctls(pod),
            apparmor_profile: apparmor,
            host_devices: Vec::new(),
            host_pid: spec(pod).host_pid == Some(true),
            host_ipc: spec(pod).host_ipc == Some(true),
        };
        let attempt = Attempt::new(&self.dir, name, number);
        self.ctx
            .runtime
            .start(&attempt, &self.uid, &layers, plan)
            .await
            .map_err(StartError::Run)?;
        self.users.insert(name.clone(), user);
        // Image garbage collection keeps what attempts on disk still name.
        let _ = std::fs::write(attempt.dir.join("image"), image_name);
        self.watch_exit(&attempt);
        Ok(())
    }

    /// /etc/hosts, /etc/hostname and /etc/resolv.conf for the pod's containers.
    fn etc_files(&self, pod: &Pod) -> Result<Vec<BindMount>, StartError> {
        let dir = self.dir.join("etc");
        let io = |file| move |source| StartError::EtcFiles { file, source };
        std::fs::create_dir_all(&dir).map_err(io("etc directory"))?;
        let hostname = pod_hostname(pod).to_owned();
        let domain = self.ctx.services.cluster_domain();
        let hosts = hosts_file(pod, &self.pod_ip_text(pod), &domain);
        let resolv = self.ctx.services.resolv_conf(pod).into_bytes();
        let files = [
            ("hosts", "/etc/hosts", hosts.into_bytes()),
            (
                "hostname",
                "/etc/hostname",
                format!("{hostname}\n").into_bytes(),
            ),
            ("resolv.conf", "/etc/resolv.conf", resolv),
        ];
        let mut mounts = Vec::new();
        for (file, destination, content) in files {
            let path = dir.join(file);
            if std::fs::read(&path).ok().as_deref() != Some(&content[..]) {
                std::fs::write(&path, &content).map_err(io(file))?;
            }
            mounts.push(BindMount {
                destination: destination.into(),
                source: path,
                read_only: false,
            });
        }
        Ok(mounts)
    }
}

/// A pod's /etc/hosts as kubelet writes it: its own address under its host name, fully
/// qualified under `<subdomain>.<namespace>.svc.<domain>` when it has a subdomain (the
/// StatefulSet pod `web-0` of service `nginx` is `web-0.nginx.default.svc.cluster.local`).
fn hosts_file(pod: &Pod, ip: &str, domain: &str) -> String {
    let hostname: String = pod_hostname(pod).chars().take(63).collect();
    let mut hosts = String::from("# Kubernetes-managed hosts file (bramble).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !host_network(pod) {
        let subdomain = spec(pod).subdomain.as_deref().unwrap_or_default();
        if subdomain.is_empty() {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        } else {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            hosts.push_str(&format!(
                "{ip}\t{hostname}.{subdomain}.{namespace}.svc.{domain}\t{hostname}\n"
            ));
        }
    }
    for alias in spec(pod).host_aliases.iter().flatten() {
        let names = alias.hostnames.as_deref().unwrap_or_default().join(" ");
        hosts.push_str(&format!("{}\t{names}\n", alias.ip));
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_a_pod_under_its_subdomain_as_kubelet_does() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"hostname": "web-0", "subdomain": "nginx",
                     "containers": [{"name": "app"}],
                     "hostAliases": [{"ip": "10.0.0.9", "hostnames": ["db", "db.lan"]}]},
        }))
        .unwrap();
        let hosts = hosts_file(&pod, "10.42.1.5", "cluster.local");
        assert!(
            hosts.contains("\n10.42.1.5\tweb-0.nginx.shop.svc.cluster.local\tweb-0\n"),
            "{hosts}"
        );
        assert!(hosts.ends_with("10.0.0.9\tdb db.lan\n"));
        let plain: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "solo", "namespace": "shop"},
            "spec": {"containers": [{"name": "app"}]},
        }))
        .unwrap();
        assert!(hosts_file(&plain, "10.42.1.6", "cluster.local").ends_with("\n10.42.1.6\tsolo\n"));
    }

    #[test]
    fn restart_back_off_doubles_and_resets() {
        let base = Duration::from_secs(10);
        assert_eq!(restart_delay(base, 0, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            restart_delay(base, 1, Duration::ZERO),
            Duration::from_secs(10)
        );
        assert_eq!(
            restart_delay(base, 2, Duration::ZERO),
            Duration::from_secs(20)
        );
        assert_eq!(
            restart_delay(base, 3, Duration::ZERO),
            Duration::from_secs(40)
        );
        assert_eq!(restart_delay(base, 9, Duration::ZERO), MAX_BACKOFF);
        assert_eq!(restart_delay(base, 9, Duration::from_secs(900)), base);
    }
}
