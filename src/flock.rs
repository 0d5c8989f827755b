//! Exclusive `flock(2)` locks on open files: held while the guard lives, released by the
//! kernel when the process dies however it dies. A leaf: any layer may use it.
//!
//! Two users: the run lock next to a pipeline's state database (one run of a pipeline at a
//! time among the processes of one machine, containers included, whatever their PID
//! namespaces), and an output folder on local disk while its manifest is compared and
//! swapped.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// An exclusive lock on an open file (or folder), released when dropped.
#[derive(Debug)]
pub(crate) struct Flock {
    file: File,
}

impl Flock {
    /// Waits for, and takes, the lock on `file`.
    pub(crate) fn wait(file: File) -> io::Result<Flock> {
        lock(&file, libc::LOCK_EX)?;
        Ok(Flock { file })
    }

    /// Takes the lock on `file` if nobody holds it: `Ok(None)` if someone does.
    pub(crate) fn try_take(file: File) -> io::Result<Option<Flock>> {
        match lock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(Flock { file })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The locked file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

fn lock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: as in `lock`. (Closing the file would release it too.)
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let open = || File::create(&path).unwrap();
        let first = Flock::try_take(open()).unwrap().expect("free");
        assert!(Flock::try_take(open()).unwrap().is_none(), "held");
        drop(first);
        assert!(Flock::try_take(open()).unwrap().is_some(), "released");
    }
}
