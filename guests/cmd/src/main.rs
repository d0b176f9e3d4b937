//! A command for `wms run`, built for both wasip1 and wasip2. The first argument picks what
//! it does; the exit status is the point of several of them.

use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let action = args.get(1).map(String::as_str).unwrap_or("");
    match action {
        "args" => println!("{}", args[2..].join("|")),
        "argv0" => println!("{}", args[0]),
        "exit" => std::process::exit(args[2].parse().unwrap()),
        "env" => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            println!("{}", vars.join("\n"));
        }
        "cat" => {
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input).unwrap();
            std::io::stdout().write_all(&input).unwrap();
        }
        "read" => match std::fs::read_to_string(&args[2]) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("read {}: {e}", args[2]);
                std::process::exit(2);
            }
        },
        "write" => match std::fs::write(&args[2], "written by the guest") {
            Ok(()) => println!("wrote {}", args[2]),
            Err(e) => {
                eprintln!("write {}: {e}", args[2]);
                std::process::exit(2);
            }
        },
        "trap" => panic!("asked to trap"),
        "loop" => loop {
            std::hint::black_box(0);
        },
        "hog" => {
            let mut v: Vec<Vec<u8>> = Vec::new();
            loop {
                v.push(vec![1; 1 << 20]);
            }
        }
        other => {
            eprintln!("unknown action {other:?}");
            std::process::exit(64);
        }
    }
}
