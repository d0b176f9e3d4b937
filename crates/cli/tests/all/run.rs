//! `wms run`: commands to completion, preview 1 and preview 2 alike.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::harness::{WMS, artifacts};

/// Runs `wms run ARGS...` with `stdin`; returns (status, stdout, stderr).
fn run(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(WMS)
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BOTH: [(&str, &str); 2] = [("p1", artifacts::CMD_P1), ("p2", artifacts::CMD)];

/// The status `wms run` reports when the guest exits with `code`: preview 1 carries the number,
/// WASI 0.2's `exit` only success or failure (so any failure is 1).
fn status(kind: &str, code: i32) -> i32 {
    if kind == "p2" && code != 0 { 1 } else { code }
}

#[test]
fn exit_codes_args_and_stdio() {
    for (kind, cmd) in BOTH {
        assert_eq!(run(&[cmd, "exit", "0"], b"").0, 0, "{kind}");
        assert_eq!(run(&[cmd, "exit", "7"], b"").0, status(kind, 7), "{kind}");
        let (code, out, _) = run(&[cmd, "args", "a b", "--flag", "-x"], b"");
        assert_eq!((code, out.as_str()), (0, "a b|--flag|-x\n"), "{kind}");
        let (code, out, _) = run(&[cmd, "cat"], b"from stdin\nto stdout\n");
        assert_eq!(
            (code, out.as_str()),
            (0, "from stdin\nto stdout\n"),
            "{kind}"
        );
    }
}

#[test]
fn environment_is_only_what_is_passed() {
    for (kind, cmd) in BOTH {
        let (code, out, _) = run(&["--env", "A=1", "--env", "B=two words", cmd, "env"], b"");
        assert_eq!((code, out.as_str()), (0, "A=1\nB=two words\n"), "{kind}");
    }
}

#[test]
fn directories_are_read_only_unless_asked_and_others_are_invisible() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "input").unwrap();
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("secret.txt"), "secret").unwrap();
    let mount = format!("{}::/data", dir.path().display());
    for (kind, cmd) in BOTH {
        let (code, out, _) = run(&["--dir", &mount, cmd, "read", "/data/in.txt"], b"");
        assert_eq!((code, out.as_str()), (0, "input"), "{kind}");
        let (code, _, err) = run(&["--dir", &mount, cmd, "write", "/data/out.txt"], b"");
        assert_eq!(
            code,
            status(kind, 2),
            "{kind}: a read-only directory was writable: {err}"
        );
        assert!(!dir.path().join("out.txt").exists());
        let secret_path = secret.path().join("secret.txt");
        let (code, _, _) = run(
            &["--dir", &mount, cmd, "read", secret_path.to_str().unwrap()],
            b"",
        );
        assert_eq!(
            code,
            status(kind, 2),
            "{kind}: an unmounted directory was visible"
        );
        let rw = format!("{}::/data", dir.path().display());
        let (code, out, err) = run(&["--dir-rw", &rw, cmd, "write", "/data/out.txt"], b"");
        assert_eq!(
            (code, out.as_str()),
            (0, "wrote /data/out.txt\n"),
            "{kind}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
            "written by the guest"
        );
        std::fs::remove_file(dir.path().join("out.txt")).unwrap();
    }
}

#[test]
fn traps_timeouts_and_memory_limits_have_their_own_exit_codes() {
    for (kind, cmd) in BOTH {
        let (code, _, err) = run(&[cmd, "trap"], b"");
        assert_eq!(code, 134, "{kind}: {err}");
        assert!(err.contains("trapped"), "{kind}: {err}");
        let (code, _, err) = run(&["--timeout", "500ms", cmd, "loop"], b"");
        assert_eq!(code, 124, "{kind}: {err}");
        let (code, _, err) = run(&["--max-memory", "16MiB", cmd, "hog"], b"");
        assert_eq!(code, 134, "{kind}: {err}");
        assert!(err.contains("memory limit"), "{kind}: {err}");
    }
}
