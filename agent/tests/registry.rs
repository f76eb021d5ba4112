//! The image store against a real OCI registry (Debian's docker-registry, installed by
//! `tests/setup-host`): push the multi-arch demo image, pull each platform, refuse corruption.

use std::collections::HashMap;
use std::process::Command;

use agent::image::demo::{installed_busyboxes, push_demo_image, Busybox};
use agent::image::local_registry::{LocalRegistry, PushAccess};
use agent::image::{ImageError, ImageStore, Platform, PullPolicy, Registry};

async fn start_registry() -> (LocalRegistry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}").parse().unwrap();
    (
        LocalRegistry::start(dir.path(), address, PushAccess::default())
            .await
            .unwrap(),
        dir,
    )
}

fn busyboxes() -> Vec<Busybox> {
    installed_busyboxes()
}

#[tokio::test]
async fn pulls_the_right_platform_of_a_multi_arch_image() {
    let (registry, _dir) = start_registry().await;
    let client = Registry::new(&registry.host(), true, Some(registry.seeder()));
    push_demo_image(&client, "bramble/demo", "1", &busyboxes())
        .await
        .unwrap();
    let name = format!("{}/bramble/demo:1", registry.host());
    let mut digests = Vec::new();
    for (platform, machine) in [("linux/amd64", "x86-64"), ("linux/arm64/v8", "aarch64")] {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(
            dir.path(),
            Platform::parse(platform).unwrap(),
            [registry.host()],
        )
        .unwrap();
        let image = store
            .ensure(&name, PullPolicy::IfNotPresent, &HashMap::new())
            .await
            .unwrap();
        assert_eq!(image.config.cmd, vec!["/bin/demo-server"]);
        let busybox = store.layer_dir(&image.layers[0]).join("bin/busybox");
        let output = Command::new("file").arg(&busybox).output().unwrap();
        let described = String::from_utf8_lossy(&output.stdout);
        assert!(
            described.to_lowercase().contains(machine),
            "{platform} got {described}"
        );
        digests.push(image.digest.clone());
        // Present now: Never and IfNotPresent answer from disk.
        let again = store
            .ensure(&name, PullPolicy::Never, &HashMap::new())
            .await
            .unwrap();
        assert_eq!(again.digest, image.digest);
    }
    assert_ne!(digests[0], digests[1]);
}

#[tokio::test]
async fn a_corrupted_layer_is_refused_and_never_used() {
    let (registry, _dir) = start_registry().await;
    let client = Registry::new(&registry.host(), true, Some(registry.seeder()));
    push_demo_image(&client, "bramble/demo", "1", &busyboxes())
        .await
        .unwrap();
    // Flip bytes in every stored blob bigger than a manifest: those are the layers.
    let blobs = registry.storage.join("docker/registry/v2/blobs/sha256");
    let mut corrupted = 0;
    for prefix in std::fs::read_dir(&blobs).unwrap().flatten() {
        for blob in std::fs::read_dir(prefix.path()).unwrap().flatten() {
            let data = blob.path().join("data");
            let mut bytes = std::fs::read(&data).unwrap();
            if bytes.len() > 100_000 {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                std::fs::write(&data, bytes).unwrap();
                corrupted += 1;
            }
        }
    }
    assert_eq!(corrupted, 2, "expected one layer per architecture");
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), Platform::host(), [registry.host()]).unwrap();
    let name = format!("{}/bramble/demo:1", registry.host());
    let error = store
        .ensure(&name, PullPolicy::IfNotPresent, &HashMap::new())
        .await
        .unwrap_err();
    let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(matches!(error, ImageError::Registry { .. }), "{chain}");
    assert!(chain.contains("corrupted download"), "{chain}");
    assert!(store.local(&name).is_none());
    let layers: Vec<_> = std::fs::read_dir(dir.path().join("layers"))
        .unwrap()
        .collect();
    assert!(layers.is_empty(), "a corrupted layer was kept");
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "download left behind");
}

#[tokio::test]
async fn missing_images_and_never_pull_say_so() {
    let (registry, _dir) = start_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), Platform::host(), [registry.host()]).unwrap();
    let name = format!("{}/nothing/here:1", registry.host());
    let error = store
        .ensure(&name, PullPolicy::IfNotPresent, &HashMap::new())
        .await
        .unwrap_err();
    match &error {
        ImageError::Registry { source, .. } => assert!(source.is_not_found(), "{source}"),
        other => panic!("unexpected {other}"),
    }
    let error = store
        .ensure(&name, PullPolicy::Never, &HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "ErrImageNeverPull");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pushes_and_deletes_are_refused() {
    let (registry, _dir) = start_registry().await;
    let anonymous = Registry::new(&registry.host(), true, None);
    let error = anonymous
        .push_blob("bramble/evil", bytes::Bytes::from_static(b"payload"))
        .await
        .unwrap_err();
    assert!(error.is_unauthorized(), "{error}");
    // The challenge is the distribution spec's, and deletes are refused the same way.
    let http = |method: &str, path: &str| {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "-X", method])
            .arg(format!("http://{}{path}", registry.host()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_lowercase()
    };
    let deleted = http("DELETE", "/v2/bramble/demo/manifests/1");
    assert!(deleted.starts_with("http/1.1 401"), "{deleted}");
    assert!(
        deleted.contains("www-authenticate: basic realm=\"bramble registry\""),
        "{deleted}"
    );
    // Pulls stay anonymous.
    assert!(http("GET", "/v2/").starts_with("http/1.1 200"));
    let seeder = Registry::new(&registry.host(), true, Some(registry.seeder()));
    seeder
        .push_blob("bramble/ok", bytes::Bytes::from_static(b"payload"))
        .await
        .unwrap();
}

#[tokio::test]
async fn configured_credentials_push_and_wrong_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let address = "127.0.0.1:0".parse().unwrap();
    let access = PushAccess {
        secret: Some("alice:s3cret".into()),
    };
    let registry = LocalRegistry::start(dir.path(), address, access)
        .await
        .unwrap();
    let as_user = |password: &str| {
        Registry::new(
            &registry.host(),
            true,
            Some(agent::image::Credentials {
                username: "alice".into(),
                password: password.into(),
            }),
        )
    };
    let content = bytes::Bytes::from_static(b"layer");
    as_user("s3cret")
        .push_blob("team/app", content.clone())
        .await
        .unwrap();
    // Other content: the same blob would be found present and not pushed at all.
    let error = as_user("guess")
        .push_blob("team/app", bytes::Bytes::from_static(b"replacement"))
        .await
        .unwrap_err();
    assert!(error.is_unauthorized(), "{error}");
}
