//! Native addons for the preflight tests: real ELF shared objects compiled
//! here with `cc`, some linked against stub libraries that stand for musl or a
//! glibc newer than any, copies with another CPU in their ELF header, and
//! sharp as npm installs it for x64 or arm64.

use std::fs;
use std::path::Path;
use std::process::Command;

/// Compiles `code` into the shared object `out`, with extra `cc` arguments.
fn cc(dir: &Path, code: &str, out: &Path, args: &[&str]) {
    let source = dir.join(format!("{}.c", out.file_name().unwrap().to_string_lossy()));
    fs::write(&source, code).unwrap();
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(out)
        .arg(&source)
        .args(args)
        .current_dir(dir)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc {}", out.display());
}

/// A real x86_64 addon linked against this machine's glibc (it calls `puts`).
pub fn real(work: &Path, out: &Path) {
    cc(
        work,
        "#include <stdio.h>\nint dropship_probe(void) { return puts(\"addon\"); }\n",
        out,
        &[],
    );
}

/// A real addon with `e_machine` set to AArch64 (183): what npm installs on an arm64 runner.
pub fn aarch64(work: &Path, out: &Path) {
    real(work, out);
    let mut bytes = fs::read(out).unwrap();
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    fs::write(out, bytes).unwrap();
}

/// An addon that needs musl's `libc.musl-x86_64.so.1`, as built on Alpine.
pub fn musl(work: &Path, out: &Path) {
    stub_libc(work, "libc.musl-x86_64.so.1", None);
    needing(work, out, "libc.musl-x86_64.so.1");
}

/// An addon that needs `GLIBC_99.0` of `libc.so.6`: built against a newer glibc than the server's.
pub fn newer_glibc(work: &Path, out: &Path) {
    stub_libc(work, "libc.so.6", Some("GLIBC_99.0"));
    needing(work, out, "libc.so.6");
}

/// A library `soname` in `work/stubs` defining `dropship_libc_probe`, under `version` if given.
fn stub_libc(work: &Path, soname: &str, version: Option<&str>) {
    let stubs = work.join("stubs");
    fs::create_dir_all(&stubs).unwrap();
    let mut args = vec![format!("-Wl,-soname,{soname}"), "-nostdlib".into()];
    if let Some(version) = version {
        let script = stubs.join(format!("{soname}.map"));
        fs::write(
            &script,
            format!("{version} {{ global: dropship_libc_probe; local: *; }};\n"),
        )
        .unwrap();
        args.push(format!("-Wl,--version-script,{}", script.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cc(
        &stubs,
        "int dropship_libc_probe(void) { return 1; }\n",
        &stubs.join(soname),
        &args,
    );
}

/// An addon calling `dropship_libc_probe` of the stub `soname`, and linking nothing else.
fn needing(work: &Path, out: &Path, soname: &str) {
    let stubs = work.join("stubs").display().to_string();
    cc(
        work,
        "int dropship_libc_probe(void);\nint dropship_probe(void) { return dropship_libc_probe(); }\n",
        out,
        &["-nostdlib", "-L", &stubs, &format!("-l:{soname}")],
    );
}

/// A Mach-O file, as npm installs for a macOS variant.
pub fn macos(out: &Path) {
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    fs::write(out, b"\xcf\xfa\xed\xfe\x0c\x00\x00\x01macho").unwrap();
}

/// sharp as npm installs it for linux `cpu` with glibc, from the committed
/// lock file of `tests/apps/sharp-only` (`npm ci --os=linux --cpu=<cpu>`):
/// its `node_modules`, installed once per machine and lock file into
/// `target/fixture-apps/sharp-<cpu>-<hash>/`.
pub fn sharp(cpu: &str) -> std::path::PathBuf {
    use sha2::Digest;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/sharp-only");
    let lock_file = fs::read(source.join("package-lock.json")).unwrap();
    let hash: String = sha2::Sha256::digest(&lock_file)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        std::path::PathBuf::from,
    );
    let root = target.join("fixture-apps");
    fs::create_dir_all(&root).unwrap();
    let out = root.join(format!("sharp-{cpu}-{hash}"));
    // Other test processes may install the same at the same time.
    let lock = fs::File::create(root.join(format!("sharp-{cpu}.lock"))).unwrap();
    lock.lock().unwrap();
    let done = out.join(".fixture-built");
    if !done.exists() {
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out).unwrap();
        for file in ["package.json", "package-lock.json"] {
            fs::copy(source.join(file), out.join(file)).unwrap();
        }
        let installed = Command::new("npm")
            .args(["ci", "--os=linux", &format!("--cpu={cpu}"), "--libc=glibc"])
            .args([
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(&out)
            .output()
            .expect("run npm");
        assert!(
            installed.status.success(),
            "npm ci for {cpu} failed (is the npm registry reachable?)\n{}",
            String::from_utf8_lossy(&installed.stderr)
        );
        fs::write(&done, b"").unwrap();
    }
    out.join("node_modules")
}
