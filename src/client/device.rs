//! Which device id this run of the client sends as (PROTOCOL §19, Devices
//! and chains).
//!
//! A key store keeps its device ids in `keys/USER.devices/`, one
//! `<32 hex>.lock` file each, so every command of a key store reuses the
//! same id and readers do not collect a new sender key per command. A run
//! claims the first id whose file it can lock exclusively (`flock`), and
//! holds the lock until it exits: two `hush chat` of one key store running
//! at once get different ids, so their chains never collide. When every id
//! is taken, a new one is made.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::crypto::device::DeviceId;
use crate::crypto::private_file::{create_private_dir, try_lock_private_file};

/// A device id held for this process. Dropping it releases the id.
pub struct DeviceClaim {
    id: DeviceId,
    /// Holds the `flock`; closing the file releases it.
    _lock: File,
}

impl DeviceClaim {
    /// Claims a free device id of `user` in the key store at `keys_dir`.
    pub fn claim(keys_dir: &Path, user: &str) -> anyhow::Result<Self> {
        let dir = devices_dir(keys_dir, user);
        create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for id in known_ids(&dir)? {
            if let Some(lock) = lock(&lock_path(&dir, &id))? {
                return Ok(Self { id, _lock: lock });
            }
        }
        loop {
            let id = DeviceId::generate()?;
            if let Some(lock) = lock(&lock_path(&dir, &id))? {
                return Ok(Self { id, _lock: lock });
            }
        }
    }

    pub fn id(&self) -> DeviceId {
        self.id
    }
}

/// The device ids this key store has used for `user`, in a stable order.
pub fn known_devices(keys_dir: &Path, user: &str) -> anyhow::Result<Vec<DeviceId>> {
    let dir = devices_dir(keys_dir, user);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    known_ids(&dir)
}

fn devices_dir(keys_dir: &Path, user: &str) -> PathBuf {
    keys_dir.join(format!("{user}.devices"))
}

fn lock_path(dir: &Path, id: &DeviceId) -> PathBuf {
    dir.join(format!("{}.lock", id.to_hex()))
}

fn known_ids(dir: &Path) -> anyhow::Result<Vec<DeviceId>> {
    let mut ids: Vec<DeviceId> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            DeviceId::from_hex(name.strip_suffix(".lock")?)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// `try_lock_private_file` with the path in the error.
fn lock(path: &Path) -> anyhow::Result<Option<File>> {
    try_lock_private_file(path).with_context(|| format!("locking {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_reuses_its_device_and_concurrent_claims_differ() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceClaim::claim(dir.path(), "alice").unwrap();
        let second = DeviceClaim::claim(dir.path(), "alice").unwrap();
        assert_ne!(first.id(), second.id(), "held ids are not shared");
        let first_id = first.id();
        drop(first);
        let again = DeviceClaim::claim(dir.path(), "alice").unwrap();
        assert_eq!(again.id(), first_id, "a released id is reused");
        let mut known = known_devices(dir.path(), "alice").unwrap();
        known.sort();
        let mut expected = vec![first_id, second.id()];
        expected.sort();
        assert_eq!(known, expected, "no third id was made");
        assert!(known_devices(dir.path(), "bob").unwrap().is_empty());
    }
}
