//! A full disk for a test, without a mount or privileges: a child process whose files cannot
//! grow past a cap (`RLIMIT_FSIZE`). A write past it fails with EFBIG, as one on a full disk
//! fails with ENOSPC: partly written, then an error. The cap is per process, so the tests of the
//! same binary, running beside it in threads, are not disturbed.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Caps the file size of the process `command` starts at `bytes`.
pub fn cap_file_size(command: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: only async-signal-safe calls between fork and exec. SIGXFSZ is ignored so that a
    // write past the cap fails instead of killing the process.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
