//! Image references as kubectl users write them: `busybox`, `ghcr.io/o/app:1`, `10.0.0.1:5000/demo@sha256:…`.

use std::fmt;

use super::digest::Digest;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The registry host and port, as written (`docker.io` for bare names).
    pub registry: String,
    /// The repository path inside the registry (`library/busybox`).
    pub repository: String,
    /// The tag, `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// The manifest digest, when pinned.
    pub digest: Option<Digest>,
}

/// Docker Hub's API host; `docker.io` is only its name.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

impl Reference {
    /// Parses `name[:tag][@digest]` with Docker's normalisation: a first component without a dot,
    /// colon or `localhost` is a Docker Hub repository, and single names live under `library/`.
    pub fn parse(text: &str) -> Result<Reference, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty image name".into());
        }
        if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_uppercase() && !text.contains('@'))
        {
            return Err(format!(
                "invalid image name {text:?}: names are lowercase without spaces"
            ));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest)
                    .map_err(|e| format!("invalid digest in image name {text:?}: {}", e.problem))?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_owned())),
            _ => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            Some(_) => ("docker.io".to_owned(), name.to_owned()),
            None => ("docker.io".to_owned(), format!("library/{name}")),
        };
        let valid_path = !repository.is_empty()
            && repository.split('/').all(|part| {
                part.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            });
        if !valid_path {
            return Err(format!("invalid repository in image name {text:?}"));
        }
        if let Some(tag) = &tag {
            if tag.is_empty()
                || tag.len() > 128
                || !tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(format!("invalid tag in image name {text:?}"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the registry API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_selector(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Whether the tag is `latest` (or absent), which makes the default pull policy Always.
    pub fn is_latest(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|t| t == "latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert!(r.is_latest());
        let r = Reference::parse("grafana/grafana:11.0").unwrap();
        assert_eq!(r.repository, "grafana/grafana");
        assert!(!r.is_latest());
    }

    #[test]
    fn registries_with_ports_and_digests() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("10.99.0.1:5000/bramble/demo:1@{digest}")).unwrap();
        assert_eq!(r.registry, "10.99.0.1:5000");
        assert_eq!(r.repository, "bramble/demo");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.manifest_selector(), digest);
        let r = Reference::parse("localhost:5000/demo").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.to_string(), "localhost:5000/demo:latest");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "Busybox",
            "a b",
            "demo@sha256:12",
            "demo@sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "demo@sha256:./././././././././././././././././././././././././../../victim",
            "x/../y",
            "demo:",
            "host.io/",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
