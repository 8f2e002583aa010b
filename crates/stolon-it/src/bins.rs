//! Where the stolon binaries under test are: next to the running test executable
//! (`target/<profile>/`, the parent of its `deps/` dir), or from `STKEEPER_BIN`, `STSENTINEL_BIN`,
//! `STPROXY_BIN`, `STCTL_BIN` as in Stolon's integration tests.
//!
//! Cargo does not build another package's binaries for this crate's tests: run
//! `cargo build --workspace --bins` (same profile and features as the test run) first.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Paths of the four binaries.
#[derive(Debug, Clone)]
pub struct BinPaths {
    /// stolon-keeper.
    pub keeper: PathBuf,
    /// stolon-sentinel.
    pub sentinel: PathBuf,
    /// stolon-proxy.
    pub proxy: PathBuf,
    /// stolonctl.
    pub stolonctl: PathBuf,
}

/// The directory cargo put this executable's sibling binaries in (`target/<profile>`).
pub fn target_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

fn one(env: &str, name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let Some(dir) = dir else {
        bail!("cannot locate the target dir of the test executable; set {env}");
    };
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} not found: build the binaries first (`cargo build --workspace --bins`, same \
             profile as the tests) or set {env}",
            p.display()
        );
    }
    Ok(p)
}

/// Locates the four binaries (see the module docs).
pub fn locate() -> Result<BinPaths> {
    let dir = target_profile_dir();
    Ok(BinPaths {
        keeper: one("STKEEPER_BIN", "stolon-keeper", dir.as_deref())?,
        sentinel: one("STSENTINEL_BIN", "stolon-sentinel", dir.as_deref())?,
        proxy: one("STPROXY_BIN", "stolon-proxy", dir.as_deref())?,
        stolonctl: one("STCTL_BIN", "stolonctl", dir.as_deref())?,
    })
}
