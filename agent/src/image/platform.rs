//! Which manifest of a multi-arch index fits this machine: OS, architecture **and** variant.

use serde_json::Value;

/// An OCI platform: `linux/arm64/v8`, `linux/arm/v7`, `linux/amd64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// GOOS spelling: `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// `v8` for arm64, `v6`/`v7` for 32-bit ARM, none elsewhere.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary was built for. A 32-bit ARM build says v7 (Pi 2 and later
    /// running a 32-bit OS); a Pi Zero/1 would say v6, which [`Platform::score`] still accepts
    /// for v5 images.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let os = parts.next()?.to_owned();
        let architecture = parts.next()?.to_owned();
        let variant = parts.next().map(str::to_owned);
        Some(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// How well an index entry's platform fits: `None` when it cannot run here, higher is
    /// better. An exact variant beats a missing one, which beats an older compatible variant
    /// (an ARMv7 machine runs v6 and v5 code; arm64 images mostly omit their v8).
    pub fn score(&self, os: &str, architecture: &str, variant: Option<&str>) -> Option<u32> {
        if os != self.os || architecture != self.architecture {
            return None;
        }
        let ours = self.variant.as_deref();
        match (ours, variant) {
            (a, b) if a == b => Some(100),
            (_, None) => Some(90),
            (Some(ours), Some(theirs)) => {
                let ours = arm_level(ours)?;
                let theirs = arm_level(theirs)?;
                (theirs <= ours).then(|| 50 + theirs)
            }
            (None, Some(_)) => None,
        }
    }

    /// Picks the best manifest descriptor of an OCI image index or Docker manifest list.
    pub fn choose<'a>(&self, index: &'a Value) -> Option<&'a Value> {
        index
            .get("manifests")?
            .as_array()?
            .iter()
            .filter_map(|entry| {
                let platform = entry.get("platform")?;
                let score = self.score(
                    platform.get("os")?.as_str()?,
                    platform.get("architecture")?.as_str()?,
                    platform.get("variant").and_then(Value::as_str),
                )?;
                Some((score, entry))
            })
            .max_by_key(|(score, _)| *score)
            .map(|(_, entry)| entry)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

fn arm_level(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> Value {
        json!({"manifests": [
            {"digest": "amd64", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "armv6", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
            {"digest": "armv7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"digest": "arm64", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "attestation", "platform": {"os": "unknown", "architecture": "unknown"}},
        ]})
    }

    fn chosen(platform: &str, index: &Value) -> Option<String> {
        let platform = Platform::parse(platform).unwrap();
        platform
            .choose(index)
            .map(|m| m["digest"].as_str().unwrap().to_owned())
    }

    #[test]
    fn architecture_and_variant_both_count() {
        let index = index();
        assert_eq!(chosen("linux/arm64/v8", &index).as_deref(), Some("arm64"));
        assert_eq!(chosen("linux/arm/v7", &index).as_deref(), Some("armv7"));
        assert_eq!(chosen("linux/arm/v6", &index).as_deref(), Some("armv6"));
        assert_eq!(chosen("linux/amd64", &index).as_deref(), Some("amd64"));
        assert_eq!(chosen("linux/riscv64", &index), None);
    }

    #[test]
    fn newer_variants_never_run_on_older_cpus() {
        let index = json!({"manifests": [
            {"digest": "armv7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        ]});
        assert_eq!(chosen("linux/arm/v6", &index), None);
        assert_eq!(chosen("linux/arm/v7", &index).as_deref(), Some("armv7"));
    }

    #[test]
    fn arm64_images_without_a_variant_fit_a_v8_host() {
        let index = json!({"manifests": [
            {"digest": "plain", "platform": {"os": "linux", "architecture": "arm64"}},
        ]});
        assert_eq!(chosen("linux/arm64/v8", &index).as_deref(), Some("plain"));
        assert!(Platform::host().os == "linux");
    }
}
