//! `bramble encryption-key`: the keys that encrypt secrets at rest in the master's store.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct EncryptionKeyArgs {
    #[command(subcommand)]
    command: EncryptionKeyCommand,
}

#[derive(Subcommand)]
enum EncryptionKeyCommand {
    /// Encrypt every secret with a new key and drop the old one.
    ///
    /// Puts a new key first in DIR/pki/encryption-keys. If no master runs on DIR, every stored
    /// version of every secret is rewritten under it at once and the old keys are dropped:
    ///
    ///   bramble encryption-key rotate --data-dir /var/lib/bramble
    ///
    /// If a master is running there, only the key is added: the master keeps working with the
    /// key it started with (still listed) and rewrites the secrets at its next start, so restart
    /// it when convenient. Keep the key file with any copy of store.db: a backup taken before a
    /// rotation needs the keys of its time.
    #[command(verbatim_doc_comment)]
    Rotate {
        /// The master's data directory.
        #[arg(long, env = "BRAMBLE_DATA_DIR", default_value = "/var/lib/bramble")]
        data_dir: PathBuf,
    },
}

pub fn run(args: EncryptionKeyArgs) -> anyhow::Result<()> {
    match args.command {
        EncryptionKeyCommand::Rotate { data_dir } => {
            let rotation = master::rotate_encryption_key(&data_dir)
                .with_context(|| format!("cannot rotate the key in {}", data_dir.display()))?;
            match rotation {
                master::Rotation::Rewritten { key, rewritten } => println!(
                    "secrets now encrypted with key {key} ({rewritten} stored versions rewritten); \
                     older keys dropped"
                ),
                master::Rotation::Deferred { key } => println!(
                    "key {key} added; the running master rewrites the secrets under it at its \
                     next start (restart it when convenient)"
                ),
            }
            Ok(())
        }
    }
}
