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
    /// Check a bramble.toml before it goes on a card: print the settings a Pi would use, or
    /// every problem (the same checks the Pi makes at boot).
    ///
    ///   bramble image check /media/me/BRAMBLEBOOT/bramble.toml
    ///   bramble image check bramble.toml --mac dc:a6:32:00:00:01   # a Pi's [mac] overrides
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
    /// Write the image to a card, with a progress bar, then read it back to compare.
    ///
    /// Refuses a disk with a mounted partition (above all this computer's own system disk)
    /// and checks the image against its .sha256 first. Find the card with `lsblk`:
    ///
    ///   sudo bramble image flash dist/bramble-0.1.0-arm64.img /dev/sdb
    #[command(verbatim_doc_comment)]
    Flash(FlashArgs),
}

#[derive(Args)]
struct FlashArgs {
    /// The image (bramble-<version>-arm64.img).
    image: PathBuf,
    /// The whole card, e.g. /dev/sdb or /dev/mmcblk0 (not a partition).
    device: PathBuf,
    /// Do not ask before erasing the card.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// The file.
    #[arg(default_value = "bramble.toml")]
    file: PathBuf,
    /// The Ethernet address of the Pi to check for (its [mac."…"] table applies).
    #[arg(long, default_value = "00:00:00:00:00:00")]
    mac: String,
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
        ImageCommand::Check(args) => check(args),
        ImageCommand::Flash(args) => flash(args),
    }
}

fn flash(args: FlashArgs) -> anyhow::Result<()> {
    use image::flash;
    use std::io::{IsTerminal, Write};
    let disk = flash::disk(&args.device)?;
    flash::check_unused(&disk)?;
    if flash::check_checksum(&args.image)? {
        eprintln!("{} matches its .sha256", args.image.display());
    }
    let what = if disk.model.is_empty() {
        format!("{} ({} MiB)", disk.path.display(), disk.size >> 20)
    } else {
        format!(
            "{} ({}, {} MiB)",
            disk.path.display(),
            disk.model,
            disk.size >> 20
        )
    };
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "this erases everything on {what}; add --yes to go ahead without a terminal"
            );
        }
        eprint!("This erases everything on {what}. Type yes to go on: ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            anyhow::bail!("nothing written");
        }
    }
    let started = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut last_tenth = u64::MAX;
    flash::write(&args.image, &disk, &mut |done, total| {
        let line = flash::progress_line(done, total, started);
        if terminal {
            eprint!("\r{line}");
        } else {
            let tenth = (done * 10).checked_div(total).unwrap_or(10);
            if tenth != last_tenth {
                eprintln!("{line}");
                last_tenth = tenth;
            }
        }
    })?;
    if terminal {
        eprintln!();
    }
    println!(
        "Wrote and checked {} on {} in {:.1?}. Edit bramble.toml on its boot partition, then put it in a Pi.",
        args.image.display(),
        disk.path.display(),
        started.elapsed()
    );
    Ok(())
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    use image::config::{Addressing, BrambleToml};
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let file = BrambleToml::parse(&text)?;
    let node = match file.resolve(&args.mac) {
        Ok(node) => node,
        Err(problems) => {
            eprintln!(
                "{} is not usable for the Pi {}:",
                args.file.display(),
                args.mac
            );
            for problem in &problems {
                eprintln!("  - {problem}");
            }
            anyhow::bail!("{} problem(s)", problems.len());
        }
    };
    let addressing = match &node.addressing {
        Addressing::Dhcp => "dhcp".to_owned(),
        Addressing::Static {
            address,
            prefix,
            gateway,
            dns,
        } => format!(
            "{address}/{prefix} gateway {} dns {}",
            gateway.map_or("none".to_owned(), |g| g.to_string()),
            dns.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    println!("{} is valid for the Pi {}:", args.file.display(), args.mac);
    println!("  role: {}", node.role);
    println!("  cluster: {}", node.cluster);
    println!("  hostname: {}", node.hostname);
    if let Some(url) = &node.master_url {
        println!("  master: {url}");
    }
    println!(
        "  join token: {}",
        if node.join_token.is_some() {
            "set (removed from the card on first boot)"
        } else {
            "made up by the master on first boot"
        }
    );
    println!("  network: {} {addressing}", node.interface);
    if let Some(wifi) = &node.wifi {
        println!("  wifi: {} ({})", wifi.ssid, wifi.country);
    }
    println!("  ssh keys: {}", node.ssh_keys.len());
    println!("  panel: {}", node.panel_args.join(" "));
    if !node.master_args.is_empty() {
        println!("  master options: {}", node.master_args.join(" "));
    }
    Ok(())
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
