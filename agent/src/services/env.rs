//! Service environment variables: `WEB_SERVICE_HOST`, `WEB_SERVICE_PORT` and the Docker-link
//! style `WEB_PORT_80_TCP_ADDR` family, for the services that exist when a container starts;
//! `KUBERNETES_SERVICE_HOST`/`_PORT` in every pod, which in-cluster client configs read.

use super::catalog::{Catalog, Service};

/// The variables for the services a pod in `namespace` sees, as kubelet's
/// `getServiceEnvVarMap`: the API server's `kubernetes` service from `default` always (every
/// pod can find the API, even with `enableServiceLinks: false`), and with `service_links` its
/// namespace's services with a cluster IP (a `kubernetes` service of its own then wins).
/// Sorted by service name, so a container's environment does not depend on the order
/// services arrived in.
pub fn service_env(
    catalog: &Catalog,
    namespace: &str,
    service_links: bool,
) -> Vec<(String, String)> {
    let mut services: Vec<&Service> = catalog
        .services
        .values()
        .filter(|s| service_links && s.namespace == namespace && s.cluster_ip.is_some())
        .collect();
    if let Some(api) = catalog
        .service("default", "kubernetes")
        .filter(|s| s.cluster_ip.is_some())
    {
        if !services.iter().any(|s| s.name == "kubernetes") {
            services.push(api);
        }
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    services.into_iter().flat_map(variables_of).collect()
}

fn variables_of(service: &Service) -> Vec<(String, String)> {
    let Some(ip) = service.cluster_ip else {
        return Vec::new();
    };
    let Some(first) = service.ports.first() else {
        return Vec::new();
    };
    let prefix = env_name(&service.name);
    let mut vars = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.to_string()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for port in service.ports.iter().filter(|p| !p.name.is_empty()) {
        vars.push((
            format!("{prefix}_SERVICE_PORT_{}", env_name(&port.name)),
            port.port.to_string(),
        ));
    }
    vars.push((
        format!("{prefix}_PORT"),
        format!("{}://{ip}:{}", first.protocol.lower(), first.port),
    ));
    for port in &service.ports {
        let base = format!("{prefix}_PORT_{}_{}", port.port, port.protocol.upper());
        vars.push((
            base.clone(),
            format!("{}://{ip}:{}", port.protocol.lower(), port.port),
        ));
        vars.push((format!("{base}_PROTO"), port.protocol.lower().to_owned()));
        vars.push((format!("{base}_PORT"), port.port.to_string()));
        vars.push((format!("{base}_ADDR"), ip.to_string()));
    }
    vars
}

/// A service or port name as an environment variable name: upper case, `-` as `_`.
fn env_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_become_docker_link_variables() {
        let catalog = Catalog::with_services([
            json!({
                "metadata": {"namespace": "default", "name": "kubernetes"},
                "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443}]},
            }),
            json!({
                "metadata": {"namespace": "shop", "name": "redis-main"},
                "spec": {"clusterIP": "10.43.0.9", "ports": [
                    {"name": "redis", "port": 6379},
                    {"name": "metrics", "port": 9121, "protocol": "UDP"}]},
            }),
            json!({
                "metadata": {"namespace": "shop", "name": "headless"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
            }),
            json!({
                "metadata": {"namespace": "other", "name": "web"},
                "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80}]},
            }),
        ]);
        let env = service_env(&catalog, "shop", true);
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("REDIS_MAIN_SERVICE_HOST"), Some("10.43.0.9"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT_METRICS"), Some("9121"));
        assert_eq!(get("REDIS_MAIN_PORT"), Some("tcp://10.43.0.9:6379"));
        assert_eq!(
            get("REDIS_MAIN_PORT_9121_UDP"),
            Some("udp://10.43.0.9:9121")
        );
        assert_eq!(get("REDIS_MAIN_PORT_6379_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("REDIS_MAIN_PORT_6379_TCP_PORT"), Some("6379"));
        assert_eq!(get("REDIS_MAIN_PORT_6379_TCP_ADDR"), Some("10.43.0.9"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(
            get("HEADLESS_SERVICE_HOST"),
            None,
            "headless services get none"
        );
        assert_eq!(
            get("WEB_SERVICE_HOST"),
            None,
            "other namespaces' services stay out"
        );
    }

    #[test]
    fn every_pod_finds_the_api_server_even_without_service_links() {
        let catalog = Catalog::with_services([
            json!({
                "metadata": {"namespace": "default", "name": "kubernetes"},
                "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443}]},
            }),
            json!({
                "metadata": {"namespace": "shop", "name": "kubernetes-ui"},
                "spec": {"clusterIP": "10.43.0.7", "ports": [{"port": 80}]},
            }),
            json!({
                "metadata": {"namespace": "lab", "name": "kubernetes"},
                "spec": {"clusterIP": "10.43.0.8", "ports": [{"port": 8443}]},
            }),
        ]);
        for namespace in ["default", "shop", "lab", "new"] {
            let env = service_env(&catalog, namespace, false);
            let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
            assert_eq!(get("KUBERNETES_SERVICE_HOST").as_deref(), Some("10.43.0.1"));
            assert_eq!(get("KUBERNETES_SERVICE_PORT").as_deref(), Some("443"));
            assert_eq!(get("KUBERNETES_UI_SERVICE_HOST"), None, "{namespace}");
        }
        // With links, a namespace's own `kubernetes` service wins, as in kubelet.
        let lab = service_env(&catalog, "lab", true);
        assert!(lab.contains(&("KUBERNETES_SERVICE_HOST".into(), "10.43.0.8".into())));
    }
}
