//! A delta lease on a shared block device, in the spirit of sanlock's: at most
//! one node holds it, and nobody needs synchronised clocks.
//!
//! The lease is one 4 KiB block (the record below), read and written with
//! `O_DIRECT | O_DSYNC` so every read sees the device, not a cache. The holder
//! renews it by bumping `counter`. Another node takes it only when it is free
//! (released, or never written), or after watching it *unchanged* for the
//! holder's lease time on its own monotonic clock: a holder that renews is
//! never timed out, however far apart the clocks are. A taker writes its
//! claim, waits long enough for any concurrent taker's write to land, and
//! reads back: only the node whose claim survived holds the lease.
//!
//! Records carry the cluster name and refuse to be overwritten by another
//! cluster; a block that is neither zeros nor a valid record is refused too
//! (a wrong slot or device must not destroy data).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The size of a lease block (and the O_DIRECT alignment used).
pub const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"BATONLS1";
const NAME: usize = 64;

/// One lease block's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The cluster the lease belongs to.
    pub cluster: String,
    /// What the lease is for (`lease` for a `disk-lease` resource, `witness` for
    /// the cluster's witness): one slot never serves two purposes.
    pub name: String,
    /// The node holding (or that last held) it.
    pub owner: String,
    /// Random per acquisition: tells this holding apart from an earlier one of
    /// the same node.
    pub token: u64,
    /// Bumped by every write; an observer sees the holder alive by its change.
    pub counter: u64,
    /// The holder gave it up (a clean stop).
    pub released: bool,
    /// The holder's lease time: how long an observer must see no change.
    pub lease_ms: u64,
}

/// What a lease block holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    /// Never written (all zeros).
    Empty,
    /// A baton lease record.
    Lease(Record),
    /// Our magic, a wrong checksum: a read that raced a write (a disk promises
    /// atomic sectors, not atomic 4 KiB), or a record damaged for good. Its CRC
    /// tells one damaged block from another.
    Damaged(u32),
    /// Something else: not ours to overwrite.
    Foreign,
}

fn put_name(buf: &mut [u8], at: usize, name: &str) {
    let bytes = name.as_bytes();
    let n = bytes.len().min(NAME);
    buf[at..at + n].copy_from_slice(&bytes[..n]);
}

fn get_name(buf: &[u8], at: usize) -> String {
    let field = &buf[at..at + NAME];
    let end = field.iter().position(|b| *b == 0).unwrap_or(NAME);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl Record {
    /// The block's bytes: magic, names, numbers, then a CRC-32 of all before it.
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..8].copy_from_slice(MAGIC);
        put_name(&mut b, 8, &self.cluster);
        put_name(&mut b, 8 + NAME, &self.owner);
        put_name(&mut b, 8 + 2 * NAME, &self.name);
        let n = 8 + 3 * NAME;
        b[n..n + 8].copy_from_slice(&self.token.to_le_bytes());
        b[n + 8..n + 16].copy_from_slice(&self.counter.to_le_bytes());
        b[n + 16] = u8::from(self.released);
        b[n + 17..n + 25].copy_from_slice(&self.lease_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[..n + 25]);
        b[n + 25..n + 29].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Names longer than the record holds are cut; check with [`Record::fits`].
    pub fn fits(name: &str) -> bool {
        name.len() <= NAME
    }
}

/// Read a block's bytes.
pub fn decode(b: &[u8]) -> Block {
    if b.iter().all(|x| *x == 0) {
        return Block::Empty;
    }
    if b.len() < BLOCK || &b[..8] != MAGIC {
        return Block::Foreign;
    }
    let n = 8 + 3 * NAME;
    let crc = u32::from_le_bytes(b[n + 25..n + 29].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&b[..n + 25]) {
        return Block::Damaged(crc32fast::hash(b));
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    Block::Lease(Record {
        cluster: get_name(b, 8),
        owner: get_name(b, 8 + NAME),
        name: get_name(b, 8 + 2 * NAME),
        token: u64_at(n),
        counter: u64_at(n + 8),
        released: b[n + 16] != 0,
        lease_ms: u64_at(n + 17),
    })
}

/// What a block that is not a lease seems to hold, for messages.
pub fn looks_like(b: &[u8]) -> &'static str {
    let at = |i: usize, bytes: &[u8]| b.len() >= i + bytes.len() && &b[i..i + bytes.len()] == bytes;
    if at(512, b"EFI PART") {
        "a GPT partition table"
    } else if at(510, &[0x55, 0xAA]) {
        "a partition table or boot sector (MBR)"
    } else if at(1024 + 56, &[0x53, 0xEF]) {
        "an ext2/3/4 superblock"
    } else if at(0, b"XFSB") {
        "an XFS superblock"
    } else if at(0, b"LVM2") || at(512 + 24, b"LVM2") {
        "an LVM label"
    } else {
        "data that is not a baton lease"
    }
}

/// Check, before use, the block that `slot` of `device` gives a lease for
/// `purpose` (`witness` or `lease`) of `cluster`: never written, or a record of
/// this cluster for the same purpose. The problem otherwise, with the fix.
/// `Ok(false)`: the device is not there to look at (not on this machine).
pub fn check_slot(device: &Path, slot: u64, cluster: &str, purpose: &str) -> Result<bool, String> {
    use std::os::unix::fs::FileExt;
    let name = device.display();
    let Ok(file) = File::open(device) else {
        return Ok(false);
    };
    let mut b = vec![0u8; BLOCK];
    let offset = slot * BLOCK as u64;
    let n = file
        .read_at(&mut b, offset)
        .map_err(|e| format!("{name}: {e}"))?;
    if n < BLOCK {
        return Err(format!(
            "{name} ends before slot {slot} (bytes {offset}..{}); give a slot inside the device",
            offset + BLOCK as u64
        ));
    }
    let fix = "use a slot of its own in the space before partition 1 (with partition 1 at 1 MiB, slots 16 to 255 are free); see docs/operations.md, \"Preparing a shared disk\"";
    match decode(&b) {
        Block::Empty => Ok(true),
        Block::Lease(r) if r.cluster != cluster => Err(format!(
            "slot {slot} of {name} holds a lease of cluster {:?}, not {cluster:?}; {fix}",
            r.cluster
        )),
        Block::Lease(r) if r.name != purpose => Err(format!(
            "slot {slot} of {name} holds this cluster's {}, not its {purpose}; {fix}",
            if r.name == "witness" {
                "witness"
            } else {
                "resource lease"
            }
        )),
        Block::Lease(_) | Block::Damaged(_) => Ok(true),
        Block::Foreign => Err(format!(
            "slot {slot} of {name} (bytes {offset}..{}) holds {}, which baton never overwrites; {fix}",
            offset + BLOCK as u64,
            looks_like(&b)
        )),
    }
}

/// A random token for a new holding (from getrandom; odd, so never 0).
pub fn random_token() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a buffer we own, bounded by its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_le_bytes(b) | 1
    } else {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (clock ^ u64::from(std::process::id()) << 32) | 1
    }
}

/// A 4 KiB-aligned buffer, as O_DIRECT requires.
#[repr(C, align(4096))]
struct Aligned([u8; BLOCK]);

/// One lease block on a block device.
pub struct LeaseArea {
    file: File,
    offset: u64,
    /// The device, for messages.
    pub device: String,
}

impl LeaseArea {
    /// Open the block at `offset` of `device` (which must be a block device at
    /// least `offset + 4096` bytes long, `offset` a multiple of 4096).
    pub fn open(device: &Path, offset: u64) -> Result<LeaseArea, String> {
        let name = device.display().to_string();
        let meta = std::fs::metadata(device).map_err(|e| format!("device {name}: {e}"))?;
        if !meta.file_type().is_block_device() {
            return Err(format!(
                "device {name} is not a block device; give the shared disk (or a partition of it)"
            ));
        }
        if !offset.is_multiple_of(BLOCK as u64) {
            return Err(format!("offset {offset} is not a multiple of {BLOCK}"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(device)
            .map_err(|e| format!("device {name}: {e}"))?;
        let size = device_size(&file).map_err(|e| format!("device {name}: {e}"))?;
        if offset + BLOCK as u64 > size {
            return Err(format!(
                "device {name} has {size} bytes; a lease at offset {offset} needs {}",
                offset + BLOCK as u64
            ));
        }
        Ok(LeaseArea {
            file,
            offset,
            device: name,
        })
    }

    /// Read the block from the device. A damaged record is read again a few
    /// times: a read that raced another node's write sees the whole record a
    /// moment later.
    pub fn read(&self) -> io::Result<Block> {
        use std::os::unix::fs::FileExt;
        let mut buf = Box::new(Aligned([0; BLOCK]));
        let mut block = Block::Empty;
        for attempt in 0..5 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            self.file.read_exact_at(&mut buf.0, self.offset)?;
            block = decode(&buf.0);
            if !matches!(block, Block::Damaged(_)) {
                break;
            }
        }
        Ok(block)
    }

    /// Write `record` to the device (durable when this returns).
    pub fn write(&self, record: &Record) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let buf = Box::new(Aligned(record.encode()));
        self.file.write_all_at(&buf.0, self.offset)
    }
}

fn device_size(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    f.seek(io::SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            cluster: "prod".into(),
            name: "lease".into(),
            owner: "n1".into(),
            token: 0xdead_beef,
            counter: 7,
            released: false,
            lease_ms: 5000,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record();
        assert_eq!(decode(&r.encode()), Block::Lease(r.clone()));
        let released = Record {
            released: true,
            ..r
        };
        assert_eq!(decode(&released.encode()), Block::Lease(released));
    }

    #[test]
    fn zeros_are_empty_and_anything_else_is_foreign() {
        assert_eq!(decode(&[0u8; BLOCK]), Block::Empty);
        let mut ext4ish = [0u8; BLOCK];
        ext4ish[1080] = 0x53;
        ext4ish[1081] = 0xef;
        assert_eq!(decode(&ext4ish), Block::Foreign);
        // A record with one flipped bit fails its checksum: damaged, not foreign.
        let mut b = record().encode();
        b[100] ^= 1;
        assert!(matches!(decode(&b), Block::Damaged(_)));
    }

    #[test]
    fn a_regular_file_is_not_a_lease_device() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = LeaseArea::open(f.path(), 0).err().unwrap();
        assert!(e.contains("is not a block device"), "{e}");
        let e = LeaseArea::open(Path::new("/dev/baton-no-such-disk"), 0)
            .err()
            .unwrap();
        assert!(e.contains("/dev/baton-no-such-disk"), "{e}");
    }
}
