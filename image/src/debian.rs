//! Debian's arm64 packages, fetched without root and without touching the host's own apt:
//! a private apt directory (its own sources, lists and cache) under the build cache, driven
//! with `apt-get -o Dir=…`, and `.deb` files unpacked with `dpkg-deb -x`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::BuildError;

/// Where Debian comes from.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// The release the image is built from.
pub const SUITE: &str = "bookworm";
/// The keyring apt checks the archive with (Debian's `debian-archive-keyring`).
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Packages that a dependency closure drags in but that nothing on the card runs: package
/// management, login and configuration tools. Only the shared libraries programs need are
/// copied anyway (see `build`), so leaving these out only saves downloads.
const NOT_NEEDED: [&str; 14] = [
    "adduser",
    "cdebconf",
    "debconf",
    "dpkg",
    "install-info",
    "passwd",
    "tar",
    "libpam-modules",
    "libpam-modules-bin",
    "libpam0g",
    "libsemanage2",
    "libsemanage-common",
    "libdebian-installer4",
    "readline-common",
];

/// A private apt for arm64.
pub struct Apt {
    root: PathBuf,
}

/// A downloaded package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deb {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The `.deb` file.
    pub path: PathBuf,
}

impl Apt {
    /// Sets up (or reuses) the private apt directory in `root`.
    pub fn new(root: &Path) -> Result<Apt, BuildError> {
        for dir in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "debs",
        ] {
            std::fs::create_dir_all(root.join(dir)).map_err(BuildError::io(root))?;
        }
        let status = root.join("var/lib/dpkg/status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(BuildError::io(&status))?;
        }
        let sources = root.join("etc/apt/sources.list");
        let line = format!(
            "deb [arch=arm64 signed-by={KEYRING}] {MIRROR} {SUITE} main non-free-firmware\n\
             deb [arch=arm64 signed-by={KEYRING}] {MIRROR} {SUITE}-updates main non-free-firmware\n"
        );
        std::fs::write(&sources, line).map_err(BuildError::io(&sources))?;
        Ok(Apt {
            root: root.to_owned(),
        })
    }

    fn options(&self) -> Vec<String> {
        let root = self.root.display();
        [
            format!("Dir={root}"),
            format!("Dir::State::status={root}/var/lib/dpkg/status"),
            "APT::Architecture=arm64".to_owned(),
            "APT::Architectures::=arm64".to_owned(),
            "Debug::NoLocking=1".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
            "Acquire::Retries=3".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect()
    }

    fn run(&self, program: &str, args: &[&str], cwd: Option<&Path>) -> Result<String, BuildError> {
        let mut command = Command::new(program);
        command.args(self.options()).args(args);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        crate::build::output(&mut command)
    }

    /// Downloads the package lists.
    pub fn update(&self) -> Result<(), BuildError> {
        self.run("apt-get", &["-q", "update"], None).map(drop)
    }

    /// The package a virtual or meta package stands for, e.g. `linux-image-arm64` →
    /// `linux-image-6.1.0-…-arm64`.
    pub fn first_dependency(&self, package: &str) -> Result<String, BuildError> {
        let text = self.run("apt-cache", &["depends", package], None)?;
        text.lines()
            .find_map(|line| line.trim().strip_prefix("Depends: "))
            .map(|name| name.trim().to_owned())
            .ok_or_else(|| BuildError::Debian(format!("{package} depends on nothing")))
    }

    /// `packages` and everything they depend on (no recommends), minus the tools nothing on
    /// the card runs.
    pub fn closure(&self, packages: &[&str]) -> Result<Vec<String>, BuildError> {
        let mut args = vec![
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            "--no-pre-depends",
        ];
        args.extend_from_slice(packages);
        let text = self.run("apt-cache", &args, None)?;
        let names: BTreeSet<String> = text
            .lines()
            .filter(|line| !line.starts_with(' ') && !line.starts_with('<'))
            .map(|line| line.trim().to_owned())
            .filter(|name| !name.is_empty() && !NOT_NEEDED.contains(&name.as_str()))
            .collect();
        Ok(names.into_iter().collect())
    }

    /// Downloads `packages` (cached between builds) and returns them sorted by name.
    pub fn download(&self, packages: &[String]) -> Result<Vec<Deb>, BuildError> {
        let dir = self.root.join("debs");
        let mut args: Vec<&str> = vec!["-q", "download"];
        args.extend(packages.iter().map(String::as_str));
        self.run("apt-get", &args, Some(&dir))?;
        let mut debs = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(BuildError::io(&dir))? {
            let path = entry.map_err(BuildError::io(&dir))?.path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            let Some((name, rest)) = file.strip_suffix(".deb").and_then(|f| f.split_once('_'))
            else {
                continue;
            };
            if !packages.iter().any(|p| p == name) {
                continue;
            }
            let version = rest.rsplit_once('_').map_or(rest, |(v, _)| v);
            debs.push(Deb {
                name: name.to_owned(),
                version: version.replace("%3a", ":"),
                path,
            });
        }
        debs.sort();
        // An older download of the same package may linger in the cache: keep the newest.
        debs.dedup_by(|later, earlier| {
            if later.name != earlier.name {
                return false;
            }
            if version_newer(&later.version, &earlier.version) {
                std::mem::swap(later, earlier);
            }
            true
        });
        for package in packages {
            if !debs.iter().any(|d| &d.name == package) {
                return Err(BuildError::Debian(format!("{package} was not downloaded")));
            }
        }
        Ok(debs)
    }
}

/// Whether Debian version `a` sorts after `b` (`dpkg --compare-versions a gt b`).
fn version_newer(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}

/// Unpacks `deb` into `dir` (cached: a finished unpack leaves a marker).
pub fn unpack(deb: &Deb, dir: &Path) -> Result<PathBuf, BuildError> {
    let target = dir.join(format!("{}_{}", deb.name, deb.version.replace(':', "%3a")));
    let done = target.join(".unpacked");
    if done.exists() {
        return Ok(target);
    }
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&target).map_err(BuildError::io(&target))?;
    crate::build::output(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb.path)
            .arg(&target),
    )?;
    std::fs::write(&done, "").map_err(BuildError::io(&done))?;
    Ok(target)
}
