//! The card's MBR partition table: written by the builder, read by its tests, and rewritten
//! on a Pi's first boot to grow the root partition to the end of the card.

/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// FAT32 with LBA addressing: what the Pi's boot ROM looks for.
pub const TYPE_FAT32_LBA: u8 = 0x0c;
/// A Linux file system.
pub const TYPE_LINUX: u8 = 0x83;

/// One primary partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// The partition type byte.
    pub kind: u8,
    /// Marked active (bootable).
    pub bootable: bool,
    /// First sector.
    pub start: u32,
    /// Length in sectors.
    pub sectors: u32,
}

impl Partition {
    /// Where it starts, in bytes.
    pub fn offset(&self) -> u64 {
        u64::from(self.start) * SECTOR
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        u64::from(self.sectors) * SECTOR
    }

    /// Whether it has no sectors.
    pub fn is_empty(&self) -> bool {
        self.sectors == 0
    }

    /// The sector after its last.
    pub fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.sectors)
    }
}

/// The partition table in sector 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    /// The disk signature; Linux names partitions `PARTUUID=<id as %08x>-<NN>` from it.
    pub disk_id: u32,
    /// The four primary slots.
    pub partitions: [Option<Partition>; 4],
}

impl Mbr {
    /// The 512-byte sector.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut sector = [0u8; 512];
        sector[440..444].copy_from_slice(&self.disk_id.to_le_bytes());
        for (slot, partition) in self.partitions.iter().enumerate() {
            let Some(p) = partition else { continue };
            let entry = &mut sector[446 + slot * 16..446 + (slot + 1) * 16];
            entry[0] = if p.bootable { 0x80 } else { 0 };
            // CHS fields say "use LBA" (the maximum), as modern tools write them.
            entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
            entry[4] = p.kind;
            entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
            entry[8..12].copy_from_slice(&p.start.to_le_bytes());
            entry[12..16].copy_from_slice(&p.sectors.to_le_bytes());
        }
        sector[510] = 0x55;
        sector[511] = 0xaa;
        sector
    }

    /// Reads sector 0; `None` without the 0x55AA signature.
    pub fn parse(sector: &[u8]) -> Option<Mbr> {
        if sector.len() < 512 || sector[510..512] != [0x55, 0xaa] {
            return None;
        }
        let disk_id = u32::from_le_bytes(sector[440..444].try_into().ok()?);
        let mut partitions = [None; 4];
        for (slot, partition) in partitions.iter_mut().enumerate() {
            let entry = &sector[446 + slot * 16..446 + (slot + 1) * 16];
            let sectors = u32::from_le_bytes(entry[12..16].try_into().ok()?);
            if entry[4] == 0 || sectors == 0 {
                continue;
            }
            *partition = Some(Partition {
                kind: entry[4],
                bootable: entry[0] == 0x80,
                start: u32::from_le_bytes(entry[8..12].try_into().ok()?),
                sectors,
            });
        }
        Some(Mbr {
            disk_id,
            partitions,
        })
    }

    /// `PARTUUID` of partition `number` (1-4), as the kernel's `root=` takes it.
    pub fn partuuid(&self, number: usize) -> String {
        format!("{:08x}-{number:02}", self.disk_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_survives_the_round_trip() {
        let mbr = Mbr {
            disk_id: 0xb4a3_b1e0,
            partitions: [
                Some(Partition {
                    kind: TYPE_FAT32_LBA,
                    bootable: true,
                    start: 8192,
                    sectors: 196_608,
                }),
                Some(Partition {
                    kind: TYPE_LINUX,
                    bootable: false,
                    start: 204_800,
                    sectors: 300_000,
                }),
                None,
                None,
            ],
        };
        let bytes = mbr.to_bytes();
        assert_eq!(&bytes[440..444], &[0xe0, 0xb1, 0xa3, 0xb4]);
        assert_eq!(bytes[446], 0x80);
        assert_eq!(bytes[446 + 4], 0x0c);
        assert_eq!(Mbr::parse(&bytes), Some(mbr.clone()));
        assert_eq!(mbr.partuuid(2), "b4a3b1e0-02");
        assert_eq!(mbr.partitions[1].unwrap().end(), 504_800);
        assert_eq!(Mbr::parse(&[0u8; 512]), None);
    }
}
