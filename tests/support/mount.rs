//! Small filesystems for resource faults: a size- (and inode-) limited tmpfs,
//! and a read-only bind mount. Both need root: the tests using them are marked
//! `#[ignore = "needs root: …"]`, and a mount that fails fails the test. Unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn mount(args: &[&str], target: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run mount: {err}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A mount at `path`, unmounted (lazily, so a straggler cannot keep it) on drop.
pub struct Mounted {
    path: PathBuf,
}

impl Mounted {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `2m`, `64m`) at `path`.
    #[track_caller]
    pub fn tmpfs(path: &Path, size: &str) -> Mounted {
        super::assert_root("mounting a tmpfs");
        std::fs::create_dir_all(path).expect("create the mount point");
        match mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ],
            path,
        ) {
            Ok(()) => Mounted {
                path: path.to_owned(),
            },
            Err(why) => panic!("cannot mount a tmpfs at {}: {why}", path.display()),
        }
    }

    /// Makes `path` (an existing directory) read-only by bind-mounting it onto itself.
    #[track_caller]
    pub fn read_only(path: &Path) -> Mounted {
        super::assert_root("a read-only bind mount");
        if let Err(why) = mount(&["--bind", &path.display().to_string()], path) {
            panic!("cannot bind-mount {}: {why}", path.display());
        }
        let mounted = Mounted {
            path: path.to_owned(),
        };
        if let Err(why) = mount(&["-o", "remount,bind,ro"], path) {
            panic!("cannot remount {} read-only: {why}", path.display());
        }
        mounted
    }

    /// Changes mount options in place, e.g. `nr_inodes=60` or `ro`.
    #[track_caller]
    pub fn remount(&self, options: &str) {
        mount(&["-o", &format!("remount,{options}")], &self.path)
            .unwrap_or_else(|why| panic!("remount {} {options}: {why}", self.path.display()));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Used and free inodes, and free bytes, of the filesystem holding `path`.
pub fn usage(path: &Path) -> (u64, u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid C string and writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), stat.as_mut_ptr()) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    // SAFETY: statvfs returned 0.
    let stat = unsafe { stat.assume_init() };
    (
        stat.f_files - stat.f_ffree,
        stat.f_ffree,
        stat.f_bavail * stat.f_frsize,
    )
}
