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

/// A preview 1 command whose `_start` grows each of `memories` memories (of one page) by
/// `pages` pages and traps if a growth fails. Written as bytes: the tests have no assembler.
fn memories_module(memories: u8, pages: u8) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let section = |m: &mut Vec<u8>, id: u8, content: &[u8]| {
        m.push(id);
        m.push(content.len() as u8);
        m.extend_from_slice(content);
    };
    section(&mut m, 1, &[1, 0x60, 0, 0]); // one type: () -> ()
    section(&mut m, 3, &[1, 0]); // one function of that type
    let mut mems = vec![memories];
    for _ in 0..memories {
        mems.extend_from_slice(&[0, 1]); // min 1 page, no max
    }
    section(&mut m, 5, &mems);
    let mut export = vec![1, 6];
    export.extend_from_slice(b"_start");
    export.extend_from_slice(&[0, 0]);
    section(&mut m, 7, &export);
    let mut body = vec![0]; // no locals
    for i in 0..memories {
        // i32.const pages; memory.grow i; i32.const -1; i32.eq; if unreachable end
        body.push(0x41);
        if pages < 64 {
            body.push(pages);
        } else {
            // Signed LEB128 of a value in 64..=255: two bytes.
            body.extend_from_slice(&[pages | 0x80, pages >> 7]);
        }
        body.extend_from_slice(&[0x40, i]);
        body.extend_from_slice(&[0x41, 0x7f, 0x46, 0x04, 0x40, 0x00, 0x0b]);
    }
    body.push(0x0b);
    let mut code = vec![1, body.len() as u8];
    code.extend_from_slice(&body);
    section(&mut m, 10, &code);
    m
}

#[test]
fn max_memory_is_the_sum_over_an_instances_memories() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    // Two memories of 1 + 160 pages (10 MiB each) under a 16 MiB limit: each alone fits, together
    // they do not. Before the limit was per instance, this exited 0.
    let two = write("two.wasm", memories_module(2, 160));
    let (code, _, err) = run(&["--max-memory", "16MiB", &two], b"");
    assert_eq!(code, 134, "{err}");
    assert!(err.contains("memory limit"), "{err}");
    // The same module under a limit that holds both runs to completion.
    let (code, _, err) = run(&["--max-memory", "32MiB", &two], b"");
    assert_eq!(code, 0, "{err}");
    // More memories than an instance may have (the pool's count per slot, now on demand too).
    let three = write("three.wasm", memories_module(3, 1));
    let (code, _, err) = run(&[&three], b"");
    assert_eq!(code, 134, "{err}");
    assert!(err.contains("memor"), "{err}");
}

#[test]
fn a_wasi_03_command_runs_to_completion() {
    let (code, out, err) = run(&[artifacts::P3CMD, "a b", "--flag"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("a b --flag\n"), "{out}");
    assert!(out.starts_with("p3cmd: "), "{out}");
    // `run` returning an error is status 1, as for WASI 0.2; a trap is 134.
    assert_eq!(run(&[artifacts::P3CMD, "fail"], b"").0, 1);
    let (code, _, err) = run(&[artifacts::P3CMD, "trap"], b"");
    assert_eq!(code, 134, "{err}");
    assert!(err.contains("trapped"), "{err}");
}
