//! The signing key and signed checkpoints.
//!
//! A checkpoint says "the receipt at `seq` hashes to `hash`", signed with the
//! daemon's Ed25519 key; it fixes every receipt up to `seq`, because each
//! receipt's hash covers its predecessor's. A *start* checkpoint, written
//! when retention deletes the oldest receipts, says "the log now starts at
//! `seq`, whose predecessor hashed to `hash`".
//!
//! Stored like receipts: the prost encoding of [`Checkpoint`] whose last
//! field is the signature (tag 15), over
//! `"agentgate.checkpoint.v1\0" ‖ body`.
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ring::{
    digest, rand,
    signature::{self, Ed25519KeyPair, KeyPair},
};
use thiserror::Error;

use super::receipt::Hash;

const DOMAIN: &[u8] = b"agentgate.checkpoint.v1\0";
/// Field key of `Checkpoint::signature`: tag 15, wire type 2.
const SIGNATURE_KEY: u8 = (15 << 3) | 2;
const SIGNATURE_LEN: usize = 64;
pub const PUBLIC_KEY_LEN: usize = 32;

/// Private key (PKCS#8 v2, mode 0600) and public key (hex) in the state
/// directory.
pub const PRIVATE_KEY_FILE: &str = "audit-signing.pk8";
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not an Ed25519 PKCS#8 key ({reason})")]
    Rejected { path: PathBuf, reason: String },
    #[error("{path}: private key is readable by others (mode {mode:o}); it must be 0600")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: not a hex Ed25519 public key (64 hex digits)")]
    BadPublicKey { path: PathBuf },
    #[error("cannot make a key pair: the system's random source failed")]
    Random,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CheckpointKind {
    Unspecified = 0,
    /// Every N receipts or T seconds.
    Periodic = 1,
    /// Retention deleted the receipts before `seq`.
    Start = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Checkpoint {
    #[prost(enumeration = "CheckpointKind", tag = "1")]
    pub kind: i32,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// Periodic: hash of receipt `seq`. Start: hash of receipt `seq - 1`.
    #[prost(bytes = "vec", tag = "3")]
    pub hash: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub time_ns: u64,
    /// SHA-256 of the public key that signs.
    #[prost(bytes = "vec", tag = "5")]
    pub key_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "15")]
    pub signature: Vec<u8>,
}

/// The daemon's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public", &super::receipt::hex(self.public_key()))
            .finish_non_exhaustive()
    }
}

/// A public key to check checkpoints with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    public: [u8; PUBLIC_KEY_LEN],
}

pub fn key_id(public: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, public).as_ref().to_vec()
}

impl Signer {
    /// Loads the key pair from `state_dir`, making one on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, KeyError> {
        let path = state_dir.join(PRIVATE_KEY_FILE);
        match fs::read(&path) {
            Ok(pkcs8) => {
                let mode = fs::metadata(&path)
                    .map_err(io_err(&path))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(KeyError::Exposed {
                        path,
                        mode: mode & 0o777,
                    });
                }
                let signer = Self::from_pkcs8(&pkcs8, &path)?;
                signer.write_public(state_dir)?;
                Ok(signer)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create(state_dir, &path),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn create(state_dir: &Path, path: &Path) -> Result<Self, KeyError> {
        fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rand::SystemRandom::new())
            .map_err(|_| KeyError::Random)?;
        // Written to a temporary name and renamed, so a crash never leaves a
        // half-written key behind; created 0600 from the start.
        let tmp = path.with_extension("pk8.tmp");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(pkcs8.as_ref()).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        let signer = Self::from_pkcs8(pkcs8.as_ref(), path)?;
        signer.write_public(state_dir)?;
        Ok(signer)
    }

    fn from_pkcs8(pkcs8: &[u8], path: &Path) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError::Rejected {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, key_id })
    }

    /// Keeps `audit-signing.pub` in step with the private key.
    fn write_public(&self, state_dir: &Path) -> Result<(), KeyError> {
        let path = state_dir.join(PUBLIC_KEY_FILE);
        let text = format!("{}\n", super::receipt::hex(self.public_key()));
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            fs::write(&path, text).map_err(io_err(&path))?;
        }
        Ok(())
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn verifier(&self) -> Verifier {
        let mut public = [0; PUBLIC_KEY_LEN];
        public.copy_from_slice(self.public_key());
        Verifier { public }
    }

    /// Signs a checkpoint and returns the bytes to store.
    pub fn seal(&self, kind: CheckpointKind, seq: u64, hash: &Hash, time_ns: u64) -> Vec<u8> {
        let body = prost::Message::encode_to_vec(&Checkpoint {
            kind: kind as i32,
            seq,
            hash: hash.to_vec(),
            time_ns,
            key_id: self.key_id.clone(),
            signature: Vec::new(),
        });
        let mut msg = Vec::with_capacity(DOMAIN.len() + body.len());
        msg.extend_from_slice(DOMAIN);
        msg.extend_from_slice(&body);
        let sig = self.pair.sign(&msg);
        let mut stored = body;
        stored.extend_from_slice(&[SIGNATURE_KEY, SIGNATURE_LEN as u8]);
        stored.extend_from_slice(sig.as_ref());
        stored
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("not a checkpoint record")]
    Malformed,
    #[error("signed by another key ({0})")]
    OtherKey(String),
    #[error("signature does not match")]
    BadSignature,
}

impl Verifier {
    /// The key in `audit-signing.pub` form: 64 hex digits.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        super::receipt::unhex(text.trim())
            .and_then(|b| <[u8; PUBLIC_KEY_LEN]>::try_from(b).ok())
            .map(|public| Self { public })
            .ok_or_else(|| KeyError::BadPublicKey {
                path: path.to_owned(),
            })
    }

    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// Checks the signature of stored checkpoint bytes and decodes them.
    pub fn open(&self, stored: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let body_len = stored
            .len()
            .checked_sub(2 + SIGNATURE_LEN)
            .ok_or(CheckpointError::Malformed)?;
        let (body, trailer) = stored.split_at(body_len);
        if trailer[..2] != [SIGNATURE_KEY, SIGNATURE_LEN as u8] {
            return Err(CheckpointError::Malformed);
        }
        let cp: Checkpoint =
            prost::Message::decode(stored).map_err(|_| CheckpointError::Malformed)?;
        let mut msg = Vec::with_capacity(DOMAIN.len() + body.len());
        msg.extend_from_slice(DOMAIN);
        msg.extend_from_slice(body);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.public)
            .verify(&msg, &trailer[2..])
            .map_err(|_| {
                if cp.key_id != key_id(&self.public) {
                    CheckpointError::OtherKey(super::receipt::hex(
                        &cp.key_id[..8.min(cp.key_id.len())],
                    ))
                } else {
                    CheckpointError::BadSignature
                }
            })?;
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(PRIVATE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let from_file = Verifier::from_file(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(from_file, a.verifier());
    }

    #[test]
    fn an_exposed_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Signer::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(PRIVATE_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Signer::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, KeyError::Exposed { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn signatures_verify_and_catch_changes_and_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path()).unwrap();
        let stored = signer.seal(CheckpointKind::Periodic, 42, &[7; 32], 1234);
        let cp = signer.verifier().open(&stored).unwrap();
        assert_eq!((cp.seq, cp.hash.as_slice()), (42, &[7u8; 32][..]));

        // Flip each byte of the body: either it no longer decodes or the
        // signature fails.
        for i in 0..stored.len() - 66 {
            let mut bad = stored.clone();
            bad[i] ^= 1;
            assert!(signer.verifier().open(&bad).is_err(), "byte {i}");
        }

        let other = tempfile::tempdir().unwrap();
        let other = Signer::load_or_create(other.path()).unwrap();
        assert!(matches!(
            other.verifier().open(&stored),
            Err(CheckpointError::OtherKey(_))
        ));
    }

    #[test]
    fn a_public_key_file_must_be_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pub");
        fs::write(&path, "not hex\n").unwrap();
        assert!(matches!(
            Verifier::from_file(&path),
            Err(KeyError::BadPublicKey { .. })
        ));
    }
}
