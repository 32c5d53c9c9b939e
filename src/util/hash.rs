//! Content hashes for provenance and cache keys (not for security).

/// FNV-1a 64-bit as 16 hex digits: fast and dependency-free.
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// CRC-64 (XZ) of a file's content as 16 hex digits, read in 1 MiB blocks: the content
/// checksum of a recipe step's files (a slice-by-16 table, a few GB/s on one core).
pub fn file_crc64(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    const CRC64: crc::Crc<u64, crc::Table<16>> =
        crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_XZ);
    let mut file = std::fs::File::open(path)?;
    let mut digest = CRC64.digest();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut block) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        if n == 0 {
            break;
        }
        digest.update(&block[..n]);
    }
    Ok(format!("{:016x}", digest.finalize()))
}
