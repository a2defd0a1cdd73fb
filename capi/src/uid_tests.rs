//! Sharing one file between uids through `larder_options`: the group a file is created
//! with, and a process of another uid opening it only when the owner is allowed. These
//! need root (to pick any group, and to become another uid in a child); without it they
//! say so and pass.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::status::*;
use crate::test_support::{wait_child, TempDir};
use crate::*;

/// A group no account of the test machine is likely to be in.
const GROUP: u32 = 54_321;
/// The uid the child becomes (nobody's on most systems; only its number matters).
const OTHER_UID: u32 = 65_534;

fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: it needs root (to choose a group and become another uid)");
    }
    root
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Options for a small cache with mode 0660 and group [`GROUP`], accepting files owned
/// by the uids `allow`.
fn shared_options(allow: &[u32]) -> larder_options {
    let mut o = larder_options::default();
    // SAFETY: `o` is a local, writable `larder_options`.
    unsafe { larder_options_init(&mut o) };
    o.capacity = 4 << 20;
    o.mode = 0o660;
    o.group = GROUP;
    o.has_group = 1;
    o.allow_uids[..allow.len()].copy_from_slice(allow);
    o.allow_uids_count = allow.len() as u32;
    o
}

/// Opens `path` with `o`: the status and the handle (NULL unless OK).
fn open(path: &CString, o: &larder_options) -> (c_int, *mut larder_cache) {
    let mut c = std::ptr::null_mut();
    // SAFETY: a NUL-terminated name, a valid options struct of its size, a local out.
    let s = unsafe { larder_open(path.as_ptr(), o, &mut c) };
    (s, c)
}

fn last_error() -> String {
    // SAFETY: the library's NUL-terminated message, read before the next error.
    unsafe { CStr::from_ptr(larder_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn set(c: *mut larder_cache, key: &[u8], val: &[u8]) -> c_int {
    // SAFETY: a live handle and slices of their lengths.
    unsafe {
        larder_set(
            c,
            key.as_ptr().cast(),
            key.len(),
            val.as_ptr().cast(),
            val.len(),
            0,
        )
    }
}

/// The value at `key` (None unless OK).
fn get(c: *mut larder_cache, key: &[u8]) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    let mut len = 0usize;
    // SAFETY: a live handle, a key slice, a local buffer of its capacity, a local length.
    let s = unsafe {
        larder_get(
            c,
            key.as_ptr().cast(),
            key.len(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut len,
        )
    };
    (s == LARDER_OK).then(|| buf[..len].to_vec())
}

/// Removes the cache file at `path` when dropped (even when a test fails).
struct Unlink(CString);
impl Drop for Unlink {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated name.
        unsafe { larder_unlink(self.0.as_ptr()) };
    }
}

#[test]
fn a_file_is_created_with_the_group_and_mode_asked() {
    if !is_root("a_file_is_created_with_the_group_and_mode_asked") {
        return;
    }
    let dir = TempDir::new("group");
    let path = dir.0.join("c");
    let name = c_path(&path);
    let _unlink = Unlink(name.clone());
    let (s, c) = open(&name, &shared_options(&[]));
    assert_eq!(s, LARDER_OK, "{}", last_error());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.gid(), GROUP);
    assert_eq!(meta.mode() & 0o7777, 0o660);
    // SAFETY: the handle from the open above, closed once.
    unsafe { larder_close(c) };
}

/// The child's part: become `OTHER_UID` in `GROUP`, then open the file root made. Its
/// exit code says which step failed (0: all passed); it never returns.
fn as_other_uid(name: &CString) -> ! {
    let step = |code: i32, what: &str| -> ! {
        eprintln!(
            "child (uid {OTHER_UID}) step {code}: {what}: {}",
            last_error()
        );
        // SAFETY: ends the forked child without running the parent's test harness.
        unsafe { libc::_exit(code) }
    };
    // SAFETY: plain system calls with valid arguments, in the forked child only.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(GROUP) == 0
            && libc::setuid(OTHER_UID) == 0
    };
    if !dropped {
        step(2, "could not become another uid");
    }
    // Without the owner allowed: refused, naming the owner.
    let (s, c) = open(name, &shared_options(&[]));
    if s != LARDER_E_UNSAFE_FILE || !c.is_null() {
        step(3, &format!("a root-owned file without allow_uids gave {s}"));
    }
    let msg = last_error();
    if !msg.contains("owned by uid 0") || !msg.contains("add 0 to allow_uids") {
        step(4, "the message does not name the owner and the remedy");
    }
    // With root allowed: opened; the parent's value is there, and a write of ours lands.
    let (s, c) = open(name, &shared_options(&[OTHER_UID, 0]));
    if s != LARDER_OK {
        step(5, &format!("with allow_uids {{0}} the open gave {s}"));
    }
    if get(c, b"from") != Some(b"parent".to_vec()) {
        step(6, "the parent's value was not read");
    }
    if set(c, b"child", b"was here") != LARDER_OK {
        step(7, "the child's set failed");
    }
    // SAFETY: the handle from the open above, closed once.
    unsafe { larder_close(c) };
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

#[test]
fn another_uid_opens_the_file_only_with_its_owner_allowed() {
    if !is_root("another_uid_opens_the_file_only_with_its_owner_allowed") {
        return;
    }
    // Under /dev/shm (tmpfs, and every uid may pass through it), in a directory the
    // child may enter but not write.
    let dir = TempDir::new_in(Path::new("/dev/shm"), "uids");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = c_path(&dir.0.join("shared"));
    let _unlink = Unlink(name.clone());
    let (s, c) = open(&name, &shared_options(&[]));
    assert_eq!(s, LARDER_OK, "{}", last_error());
    assert_eq!(set(c, b"from", b"parent"), LARDER_OK, "{}", last_error());
    // Closed before the fork, so that the child's registry has no handle to give back.
    // SAFETY: the handle from the open above, closed once.
    unsafe { larder_close(c) };

    // SAFETY: the child only makes system calls and calls this library, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        as_other_uid(&name);
    }
    let status = wait_child(pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child failed (wait status {status:#x}; its stderr names the step)"
    );

    let (s, c) = open(&name, &shared_options(&[]));
    assert_eq!(s, LARDER_OK, "{}", last_error());
    assert_eq!(get(c, b"child"), Some(b"was here".to_vec()));
    // SAFETY: the handle from the open above, closed once.
    unsafe { larder_close(c) };
}
