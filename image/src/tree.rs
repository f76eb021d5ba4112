//! Walking a staged directory tree: the one walk the builder's size estimate, inode count,
//! time stamps and archives all use.

use std::path::Path;

/// Every entry under `root` (not `root` itself) as a path relative to it, sorted, symlinks
/// not followed.
pub fn entries(root: &Path) -> std::io::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            let relative = path.strip_prefix(root).expect("under root");
            out.push(relative.to_string_lossy().into_owned());
            if std::fs::symlink_metadata(&path)?.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}
