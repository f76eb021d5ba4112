//! `bramble image build` and `bramble image flash`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

/// `bramble image …`.
#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the flashable card image bramble-<version>-arm64.img (and its .sha256).
    ///
    /// Without root, loop mounts or Docker: Debian's arm64 kernel, Raspberry Pi firmware and
    /// busybox, with the static binary from cross/build, in an MBR card with a FAT boot
    /// partition (edit bramble.toml on it) and an ext4 root that grows to fill the card on
    /// first boot. Downloads are cached, so later builds take seconds:
    ///
    ///   cross/build
    ///   bramble image build --out dist/
    ///   bramble image flash dist/bramble-0.1.0-arm64.img /dev/sdX
    ///
    /// Needs apt-get, dpkg-deb, mkfs.ext4, mkfs.vfat, mcopy, depmod (and fakeroot without root);
    /// it says which are missing. Set SOURCE_DATE_EPOCH to choose the files' time stamp.
    #[command(verbatim_doc_comment)]
    Build(BuildArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Where to write the image.
    #[arg(long, default_value = "dist")]
    out: PathBuf,
    /// The static arm64 bramble binary (default: cross/build's output).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where downloads and unpacked packages are kept between builds.
    #[arg(long, env = "BRAMBLE_IMAGE_CACHE")]
    cache: Option<PathBuf>,
}

/// The cross/build output, looked for from the current directory upwards.
const CROSS_OUTPUT: &str = "target/aarch64-unknown-linux-musl/release/bramble";

fn default_binary() -> anyhow::Result<PathBuf> {
    let here = std::env::current_dir()?;
    for dir in here.ancestors() {
        let candidate = dir.join(CROSS_OUTPUT);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let me = std::env::current_exe()?;
    if image::elf::read(&me)?.is_some_and(|elf| elf.is_static_aarch64()) {
        return Ok(me);
    }
    anyhow::bail!(
        "no static arm64 bramble binary: run cross/build first (it writes {CROSS_OUTPUT}), or give --binary"
    )
}

fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&dir).join("bramble/image");
    }
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".cache/bramble/image"),
        None => PathBuf::from("/var/cache/bramble/image"),
    }
}

/// Runs `bramble image …`.
pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Build(args) => build(args),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let binary = match args.binary {
        Some(path) => path,
        None => default_binary()?,
    };
    let options = image::build::BuildOptions {
        out_dir: args.out,
        binary,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        cache_dir: args.cache.unwrap_or_else(default_cache),
        epoch: None,
    };
    eprintln!(
        "Building the bramble {} card image from {}",
        options.version,
        options.binary.display()
    );
    let built = image::build::build(&options, &mut |line| eprintln!("{line}"))?;
    println!(
        "{}\n  {} MiB, kernel {}, built in {:.1?}\n  sha256 {}\n\nWrite it to a card with:\n  bramble image flash {} /dev/sdX\nthen edit bramble.toml on the card's boot partition.",
        built.path.display(),
        built.size >> 20,
        built.kernel,
        built.took,
        built.sha256,
        built.path.display()
    );
    Ok(())
}
