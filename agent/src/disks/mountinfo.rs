//! `/proc/1/mountinfo` (proc(5)): which mount holds a path.
//!
//! `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`:
//! id, parent, major:minor, root, mount point, mount options, optional
//! fields up to `-`, filesystem type, source, superblock options. Spaces and
//! other odd bytes in paths are octal escapes (`\040`).

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub major_minor: String,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    /// Mount or superblock options say `ro`.
    pub read_only: bool,
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let before: Vec<&str> = before.split(' ').collect();
    let mut after = after.split(' ');
    let (major_minor, mount_point, mount_options) =
        (before.get(2)?, before.get(4)?, before.get(5)?);
    let fs_type = after.next()?;
    let source = after.next()?;
    let super_options = after.next().unwrap_or_default();
    let ro = |options: &str| options.split(',').any(|o| o == "ro");
    Some(Mount {
        major_minor: major_minor.to_string(),
        mount_point: unescape(mount_point),
        fs_type: fs_type.to_string(),
        source: unescape(source),
        read_only: ro(mount_options) || ro(super_options),
    })
}

/// Undoes the kernel's octal escapes (`\040` is a space). Only `\000` to
/// `\377` are escapes (one byte each); anything else is kept as it is.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && (b'0'..=b'3').contains(&bytes[i + 1])
            && bytes[i + 2..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path`: the longest mount point that contains it,
/// the later one when mounts are stacked on the same point.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| Path::new(&m.mount_point).components().count())
        .and_then(|longest| {
            mounts
                .iter()
                .rev()
                .find(|m| m.mount_point == longest.mount_point)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 8:17 / /var/lib/longhorn rw,relatime shared:20 - xfs /dev/sdb1 rw,attr2,inode64
41 22 8:33 / /mnt/with\\040space ro,relatime - ext4 /dev/sdc1 rw
42 22 0:50 / /var/lib/rancher rw shared:30 - tmpfs tmpfs rw
43 22 8:49 / /var/lib/rancher rw shared:31 - ext4 /dev/sdd1 ro
malformed line
";

    #[test]
    fn only_escapes_of_one_byte_are_undone() {
        // Found by fuzzing (fuzz/fuzz_targets/mountinfo.rs): `\643` overflowed.
        assert_eq!(unescape("/mnt/\\643space"), "/mnt/\\643space");
        assert_eq!(unescape("/mnt/a\\134b"), "/mnt/a\\b");
        assert_eq!(unescape("/mnt/\\377"), "/mnt/\u{fffd}");
        assert_eq!(unescape("/mnt/\\04"), "/mnt/\\04", "too short");
    }

    #[test]
    fn parses_fields_and_escapes() {
        let mounts = parse(SAMPLE);
        assert_eq!(mounts.len(), 6);
        assert_eq!(mounts[2].fs_type, "xfs");
        assert_eq!(mounts[2].source, "/dev/sdb1");
        assert_eq!(mounts[2].major_minor, "8:17");
        assert_eq!(mounts[3].mount_point, "/mnt/with space");
        assert!(mounts[3].read_only);
        assert!(!mounts[0].read_only);
    }

    #[test]
    fn finds_the_innermost_and_topmost_mount() {
        let mounts = parse(SAMPLE);
        let of = |p: &str| mount_of(&mounts, Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(of("/var/lib/longhorn/replicas"), "/var/lib/longhorn");
        assert_eq!(of("/var/lib/longhornish"), "/");
        assert_eq!(of("/etc"), "/");
        let rancher = mount_of(&mounts, Path::new("/var/lib/rancher/k3s")).unwrap();
        assert_eq!(rancher.fs_type, "ext4");
        assert!(rancher.read_only, "superblock ro counts");
    }
}
