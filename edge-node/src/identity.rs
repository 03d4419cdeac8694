//! The node's identity: an Ed25519 key pair made once at `init`, stored as PEM in the data
//! directory, and the node id derived from its public key: the first 16 bytes of blake3
//! over the SubjectPublicKeyInfo DER (what the TLS transport derives from a certificate).
//!
//! The same key pair is the node's TLS identity for peer sync, so a node id can be checked
//! against the certificate a peer presents.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use edgestore::NodeId;

/// File name of the private key inside the data directory.
pub const KEY_FILE: &str = "node.key";

/// A loaded identity.
pub struct Identity {
    pub key_pair: rcgen::KeyPair,
    pub node_id: NodeId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Identity").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Identity {
    /// Makes a new key pair and writes it to `<data_dir>/node.key` (owner-only permissions).
    /// Refuses to overwrite an existing key: a node id must never change under a store.
    pub fn create(data_dir: &Path) -> Result<Identity> {
        let path = data_dir.join(KEY_FILE);
        if path.exists() {
            bail!("{} already exists; refusing to replace a node identity", path.display());
        }
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).context("generating the node key pair")?;
        write_private(&path, key_pair.serialize_pem().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Identity::from_key_pair(key_pair))
    }

    /// Loads the key pair from `<data_dir>/node.key`.
    pub fn load(data_dir: &Path) -> Result<Identity> {
        let path = data_dir.join(KEY_FILE);
        let pem = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let key_pair =
            rcgen::KeyPair::from_pem(&pem).with_context(|| format!("{} is not a valid key", path.display()))?;
        Ok(Identity::from_key_pair(key_pair))
    }

    fn from_key_pair(key_pair: rcgen::KeyPair) -> Identity {
        let node_id = NodeId::from_public_key(&rcgen::PublicKeyData::subject_public_key_info(&key_pair));
        Identity { key_pair, node_id }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::write(path, bytes)
}
