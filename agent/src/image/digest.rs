//! Content digests as the OCI image spec writes them: `algorithm ":" encoded`.
//!
//! A digest names a blob, and the store turns it into a directory name, a file name and a URL
//! path. Anything a registry or a manifest sends is therefore parsed here before it is used: only
//! the registered algorithms (`sha256`, `sha512`) with lowercase hex of their exact length pass,
//! so no digest can carry `/`, `.` or `..` into a path.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// A hash algorithm the OCI image spec registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256, 64 hex characters; what every registry uses.
    Sha256,
    /// SHA-512, 128 hex characters.
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A checked digest: a registered algorithm and lowercase hex of its length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    /// The whole text, `sha256:<hex>`.
    text: String,
}

/// Why a text is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {text:?}: {problem}")]
pub struct DigestError {
    /// The refused text.
    pub text: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let refuse = |problem| DigestError {
            text: text.to_owned(),
            problem,
        };
        let (algorithm, encoded) = text.split_once(':').ok_or_else(|| refuse("no algorithm"))?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(refuse("unsupported algorithm (sha256 or sha512)")),
        };
        if encoded.len() != algorithm.hex_len() {
            return Err(refuse("wrong length for its algorithm"));
        }
        if !encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(refuse("not lowercase hex"));
        }
        Ok(Digest {
            algorithm,
            text: text.to_owned(),
        })
    }

    /// The SHA-256 digest of some bytes.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            text: format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes))),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part: safe as a single file name.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.name().len() + 1..]
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A hasher for content that must match this digest.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            expected: self.clone(),
            state: match self.algorithm {
                Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
                Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            },
        }
    }

    /// Whether `bytes` have this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let mut verifier = self.verifier();
        verifier.update(bytes);
        verifier.verify().is_ok()
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// Hashes streamed content with a digest's algorithm.
pub struct Verifier {
    expected: Digest,
    state: Hasher,
}

impl Verifier {
    /// Adds content.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The content's digest if it is the expected one, else the actual digest as an error.
    pub fn verify(self) -> Result<(), String> {
        let actual = match self.state {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        if actual == self.expected.text {
            Ok(())
        } else {
            Err(actual)
        }
    }
}

impl std::ops::Deref for Digest {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(text: &str) -> Result<Digest, DigestError> {
        Digest::parse(text)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Records on disk are parsed like registry answers: a record naming a bad digest does not load.
impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_registered_algorithms_with_exact_lowercase_hex_parse() {
        let good = format!("sha256:{}", "0a".repeat(32));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "0a".repeat(32));
        let long = format!("sha512:{}", "f".repeat(128));
        assert_eq!(Digest::parse(&long).unwrap().algorithm(), Algorithm::Sha512);
        let traversal = format!("sha256:{}../../victim", "./".repeat(26));
        assert_eq!(traversal.len(), 71);
        for bad in [
            traversal.as_str(),
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}", "a".repeat(65)),
            &format!("sha512:{}", "a".repeat(64)),
            &format!("md5:{}", "a".repeat(32)),
            &format!("sha256:{}/", "a".repeat(63)),
            &format!("SHA256:{}", "a".repeat(64)),
            "sha256:",
            "",
            &"a".repeat(64),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn content_is_verified_with_the_digests_algorithm() {
        let digest = Digest::sha256_of(b"layer");
        assert!(digest.matches(b"layer"));
        assert!(!digest.matches(b"other"));
        let sha512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(b"layer")));
        assert!(Digest::parse(&sha512).unwrap().matches(b"layer"));
    }

    #[test]
    fn records_with_bad_digests_do_not_deserialize() {
        let bad: Result<Vec<Digest>, _> = serde_json::from_str(r#"["sha256:../x"]"#);
        assert!(bad.is_err());
        let good = Digest::sha256_of(b"");
        let text = serde_json::to_string(&vec![good.clone()]).unwrap();
        let back: Vec<Digest> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, vec![good]);
    }
}
