//! The C ABI from C: `tests/c/abi_test.c` compiled against `include/larder.h` with
//! `-std=c11 -Wall -Wextra -Werror -pedantic`, linked to the `liblarder.so` cargo built
//! for this test run, and run; the header's FFI block compiled on its own (as the PHP
//! and LuaJIT bindings load it); the header compiled as C++; and a program linked
//! statically against `liblarder.a`.
//!
//! The libraries are found beside this test's executable (`target/<profile>/deps`):
//! cargo builds every crate type of the package's library before its integration
//! tests, there, under `cargo test` and `cargo nextest` alike, whatever the profile,
//! target or features.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
/// How long a compiled test program may run (it normally takes a second or two).
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// A directory of this test's own, removed on drop (even when the test panics).
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("larder-capi-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn header() -> PathBuf {
    Path::new(MANIFEST).join("include/larder.h")
}

/// The directory holding the `liblarder.so` and `liblarder.a` built for this run.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        if dir.join("liblarder.so").exists() && dir.join("liblarder.a").exists() {
            return dir.to_path_buf();
        }
    }
    panic!(
        "no liblarder.so and liblarder.a beside {} (cargo builds them before this test)",
        exe.display()
    );
}

fn have(tool: &str) -> bool {
    succeeds(Command::new(tool).arg("--version"))
}

/// Whether `cmd` can be run and exits with 0 within the deadline (killed past it).
fn succeeds(cmd: &mut Command) -> bool {
    let Ok(mut child) = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
        return false;
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if start.elapsed() <= RUN_DEADLINE => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Runs a compiler (or any short command) to its end or the deadline and asserts it
/// succeeded; its standard output.
fn run_ok(cmd: &mut Command) -> String {
    let (code, out, err) = run_with_deadline(cmd);
    assert_eq!(code, Some(0), "{cmd:?} failed:\n{out}{err}");
    out
}

/// Runs `cmd` to its end or the deadline (then kills it); (exit code, stdout, stderr).
///
/// Without `LD_LIBRARY_PATH`: cargo sets it to directories that may hold an older
/// `liblarder.so` (the one `cargo build` put in `target/<profile>`), which the loader
/// would otherwise prefer to the one the program was linked with.
fn run_with_deadline(cmd: &mut Command) -> (Option<i32>, String, String) {
    let mut child = cmd
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drained by threads, so a chatty program never blocks on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut so, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut se, &mut s).ok();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran past {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

const STRICT_C: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];

#[test]
fn c_program_exercises_every_call() {
    let tmp = TempDir::new("c");
    let caches = tmp.0.join("caches");
    std::fs::create_dir_all(&caches).unwrap();
    let exe = tmp.0.join("abi_test");
    let lib = lib_dir();
    run_ok(
        Command::new("cc")
            .args(STRICT_C)
            .args(["-pthread", "-I"])
            .arg(Path::new(MANIFEST).join("include"))
            .arg(Path::new(MANIFEST).join("tests/c/abi_test.c"))
            .arg("-o")
            .arg(&exe)
            .arg("-L")
            .arg(&lib)
            .arg("-l:liblarder.so")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-Wl,--disable-new-dtags"),
    );
    let (code, out, err) = run_with_deadline(Command::new(&exe).arg(&caches));
    assert_eq!(
        code,
        Some(0),
        "abi_test failed:\nstdout:\n{out}\nstderr:\n{err}"
    );
    for section in [
        "open: ok",
        "options: ok",
        "basic: ok",
        "errors: ok",
        "fill_local: ok",
        "fill_wrong_thread: ok",
        "fill_processes: ok",
        "fill_killed: ok",
        "fork: ok",
        "threads: ok",
    ] {
        assert!(out.contains(section), "no {section:?} in:\n{out}\n{err}");
    }
    let passed = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("all ")?
                .strip_suffix(" checks passed")?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no summary in:\n{out}"));
    assert!(passed > 200, "only {passed} checks ran");
}

/// The text between the FFI markers, as a binding extracts it.
fn ffi_block() -> String {
    let h = std::fs::read_to_string(header()).unwrap();
    let mut lines = h.lines();
    assert!(
        lines.any(|l| l == "/* LARDER_FFI_BEGIN */"),
        "no begin marker line"
    );
    let block: Vec<&str> = lines
        .by_ref()
        .take_while(|l| *l != "/* LARDER_FFI_END */")
        .collect();
    assert!(
        h.lines().any(|l| l == "/* LARDER_FFI_END */"),
        "no end marker line"
    );
    assert_eq!(
        h.matches("LARDER_FFI_BEGIN").count(),
        1,
        "the marker appears twice"
    );
    assert_eq!(
        h.matches("LARDER_FFI_END").count(),
        1,
        "the marker appears twice"
    );
    block.join("\n")
}

#[test]
fn ffi_block_is_plain_declarations_that_compile_alone() {
    let block = ffi_block();
    for (i, line) in block.lines().enumerate() {
        let code = line.trim_start();
        assert!(
            !code.starts_with('#'),
            "line {i} of the block is preprocessor: {line}"
        );
    }
    for banned in ["bool", "const struct", "__attribute__", "#"] {
        assert!(!block.contains(banned), "the block contains {banned:?}");
    }
    // Every call of the ABI is declared in it.
    for f in [
        "larder_options_init",
        "larder_open",
        "larder_close",
        "larder_unlink",
        "larder_get",
        "larder_get_stale",
        "larder_set",
        "larder_add",
        "larder_replace",
        "larder_remove",
        "larder_incr",
        "larder_touch",
        "larder_ttl",
        "larder_clear",
        "larder_stats",
        "larder_gets",
        "larder_cas",
        "larder_ticket_take",
        "larder_set_with_ticket",
        "larder_try_get",
        "larder_try_set",
        "larder_try_add",
        "larder_try_remove",
        "larder_try_incr",
        "larder_try_touch",
        "larder_try_get_stale",
        "larder_try_replace",
        "larder_try_ttl",
        "larder_try_clear_shard",
        "larder_try_gets",
        "larder_try_cas",
        "larder_fill_begin",
        "larder_fill_try_begin",
        "larder_fill_complete",
        "larder_fill_try_complete",
        "larder_fill_abandon",
        "larder_strerror",
        "larder_last_error",
    ] {
        let declared = [" ", "*"]
            .iter()
            .any(|before| block.contains(&format!("{before}{f}(")));
        assert!(declared, "{f} is not declared in the block");
    }
    let tmp = TempDir::new("ffi");
    let src = tmp.0.join("block.c");
    // The two headers a binding's parser knows without being told (size_t, uint64_t).
    std::fs::write(
        &src,
        format!("#include <stddef.h>\n#include <stdint.h>\n{block}\n"),
    )
    .unwrap();
    run_ok(
        Command::new("cc")
            .args(STRICT_C)
            .arg("-fsyntax-only")
            .arg(&src),
    );
}

/// The functions the block declares (every identifier followed by `(`, but the types).
fn declared_functions(block: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (i, _) in block.match_indices('(') {
        let before = &block[..i];
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        let name = &before[start..];
        if name.starts_with("larder_") {
            out.insert(name.to_string());
        }
    }
    out
}

/// The shared library exports exactly the functions the header declares.
#[test]
fn library_exports_exactly_the_declared_functions() {
    if !have("nm") {
        eprintln!("skipped: no nm");
        return;
    }
    let out = run_ok(
        Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(lib_dir().join("liblarder.so")),
    );
    let exported: std::collections::BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
        .collect();
    let declared = declared_functions(&ffi_block());
    assert!(declared.len() > 30, "{declared:?}");
    assert_eq!(exported, declared);
}

/// PHP's FFI loads the block as the PHP binding will (skipped, saying so, where PHP or
/// its FFI extension is missing).
#[test]
fn php_ffi_loads_the_block_and_calls_the_library() {
    let php_has_ffi =
        succeeds(Command::new("php").args(["-r", "exit(extension_loaded('FFI') ? 0 : 1);"]));
    if !php_has_ffi {
        eprintln!("skipped: no php with the FFI extension");
        return;
    }
    let tmp = TempDir::new("php");
    let block = tmp.0.join("block.h");
    std::fs::write(&block, ffi_block()).unwrap();
    let script = r#"
        $ffi = FFI::cdef(file_get_contents($argv[1]), $argv[2]);
        $c = $ffi->new("larder_cache*");
        $st = $ffi->larder_open($argv[3], null, FFI::addr($c));
        if ($st != $ffi->LARDER_OK) { echo "open: ", FFI::string($ffi->larder_last_error()), "\n"; exit(1); }
        if ($ffi->larder_set($c, "k", 1, "value", 5, 0) != $ffi->LARDER_OK) exit(2);
        $buf = $ffi->new("char[16]");
        $len = $ffi->new("size_t");
        if ($ffi->larder_get($c, "k", 1, $buf, 16, FFI::addr($len)) != $ffi->LARDER_OK) exit(3);
        echo FFI::string($buf, $len->cdata), " ", $ffi->LARDER_E_WRONG_THREAD, "\n";
        $ffi->larder_close($c);
    "#;
    let (code, out, err) = run_with_deadline(
        Command::new("php")
            .args(["-d", "ffi.enable=1", "-r", script, "--"])
            .arg(&block)
            .arg(lib_dir().join("liblarder.so"))
            .arg(tmp.0.join("php-cache")),
    );
    assert_eq!(code, Some(0), "php failed:\n{out}\n{err}");
    assert_eq!(out.trim(), "value 126");
}

/// The README's example (examples/hello.c) builds as its comment says and runs.
#[test]
fn readme_example_runs() {
    let tmp = TempDir::new("hello");
    let exe = tmp.0.join("hello");
    let lib = lib_dir();
    run_ok(
        Command::new("cc")
            .args(STRICT_C)
            .arg("-I")
            .arg(Path::new(MANIFEST).join("include"))
            .arg(Path::new(MANIFEST).join("examples/hello.c"))
            .arg("-L")
            .arg(&lib)
            .arg("-l:liblarder.so")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-Wl,--disable-new-dtags")
            .arg("-o")
            .arg(&exe),
    );
    let (code, out, err) = run_with_deadline(Command::new(&exe).arg(tmp.0.join("cache")));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(out, "token:abc = claims\nfail:alice = 1\n");
}

#[test]
fn header_compiles_as_cpp() {
    if !have("c++") {
        eprintln!("skipped: no C++ compiler");
        return;
    }
    let tmp = TempDir::new("cpp");
    let src = tmp.0.join("use.cpp");
    std::fs::write(
        &src,
        "#include \"larder.h\"\n\
         int main() {\n\
           larder_options o;\n\
           larder_options_init(&o);\n\
           larder_status s = LARDER_OK;\n\
           return larder_strerror(s) != nullptr ? 0 : 1;\n\
         }\n",
    )
    .unwrap();
    run_ok(
        Command::new("c++")
            .args([
                "-std=c++11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-fsyntax-only",
            ])
            .arg("-I")
            .arg(Path::new(MANIFEST).join("include"))
            .arg(&src),
    );
}

#[test]
fn static_library_links_and_runs() {
    let tmp = TempDir::new("static");
    let src = tmp.0.join("static.c");
    let exe = tmp.0.join("static");
    std::fs::write(
        &src,
        "#include \"larder.h\"\n\
         #include <stdio.h>\n\
         #include <string.h>\n\
         int main(int argc, char **argv) {\n\
           larder_cache *c = NULL;\n\
           char buf[8];\n\
           size_t len = 0;\n\
           if (argc != 2) return 2;\n\
           if (larder_open(argv[1], NULL, &c) != LARDER_OK) { puts(larder_last_error()); return 3; }\n\
           if (larder_set(c, \"k\", 1, \"v\", 1, 0) != LARDER_OK) return 4;\n\
           if (larder_get(c, \"k\", 1, buf, sizeof buf, &len) != LARDER_OK || len != 1) return 5;\n\
           larder_close(c);\n\
           puts(\"static ok\");\n\
           return 0;\n\
         }\n",
    )
    .unwrap();
    run_ok(
        Command::new("cc")
            .args(STRICT_C)
            .arg("-I")
            .arg(Path::new(MANIFEST).join("include"))
            .arg(&src)
            .arg(lib_dir().join("liblarder.a"))
            .args(["-lpthread", "-ldl", "-lm", "-lgcc_s", "-o"])
            .arg(&exe),
    );
    let (code, out, err) = run_with_deadline(Command::new(&exe).arg(tmp.0.join("cache")));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(out.trim(), "static ok");
}
