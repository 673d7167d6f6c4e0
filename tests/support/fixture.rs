//! A directory tree shaped like a real Next.js `output: 'standalone'` build,
//! plus the release tree dropship is expected to assemble from it.
//!
//! Everything is deterministic: the same variant always gives the same bytes,
//! paths and modes (files 0644, the `next` bin script 0755, dirs 0755). Two
//! variants differ only in a few files: `server.js`, `.next/BUILD_ID`,
//! `.next/server/app/index.html`, the `main-*.js` chunk (and its map),
//! `public/images/big.bin`, and the `.next/static/<build id>/` directory name.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

const MAIN_CHUNK: &str = "main-3f2a9c1b7d4e6f80.js";
const APP_CHUNK: &str = "_app-8c41d2e0a9b7f315.js";
const APP_CSS: &str = "app-5e0b7a2c91d4f6e3.css";

/// Writes a Next.js app dir (the "working directory") at
/// `root/app-<variant>` (variant with characters other than `[A-Za-z0-9_-]`
/// replaced by `_`), replacing whatever was there, and returns its path.
/// Calling it for several variants under the same root gives separate dirs.
pub fn nextjs_app(root: &Path, variant: &str) -> PathBuf {
    let app = root.join(format!("app-{}", sanitize(variant)));
    if app.symlink_metadata().is_ok() {
        fs::remove_dir_all(&app).expect("remove previous fixture app dir");
    }
    mkdir(&app);
    let standalone = app.join(".next/standalone");
    write_server_part(&standalone, variant);
    write_node_modules(&standalone.join("node_modules"));
    write_build_outputs(&app, variant);
    write_sources(&app);
    app
}

/// Same, monorepo shape: server.js under `.next/standalone/apps/web/`,
/// node_modules at `.next/standalone/node_modules`; returns the app dir
/// `root/apps/web` (the working directory), with `.next/standalone` inside
/// it. The variant is `"monorepo"`. The dir is replaced if it exists.
pub fn nextjs_monorepo_app(root: &Path) -> PathBuf {
    let variant = "monorepo";
    mkdir(root);
    write_file(
        &root.join("package.json"),
        br#"{ "name": "fixture-monorepo", "private": true, "workspaces": ["apps/*"] }
"#,
    );
    write_file(
        &root.join("pnpm-workspace.yaml"),
        b"packages:\n  - apps/*\n",
    );
    let app = root.join("apps/web");
    if app.symlink_metadata().is_ok() {
        fs::remove_dir_all(&app).expect("remove previous fixture app dir");
    }
    mkdir(&app);
    let standalone = app.join(".next/standalone");
    write_file(
        &standalone.join("package.json"),
        br#"{ "name": "fixture-monorepo", "private": true }
"#,
    );
    write_server_part(&standalone.join("apps/web"), variant);
    write_node_modules(&standalone.join("node_modules"));
    // As in a real monorepo's standalone build: packages have server.js files too.
    write_file(
        &standalone.join("node_modules/react-dom/server.js"),
        b"\"use strict\";\nmodule.exports = require('./server.node');\n",
    );
    write_build_outputs(&app, variant);
    write_sources(&app);
    app
}

/// The build-id directory of `variant`'s `.next/static`, relative to a release:
/// what a later release of another variant also holds (`keep-assets`).
pub fn static_build_dir(variant: &str) -> String {
    format!(".next/static/{}", sanitize(&build_id(variant)))
}

/// The release tree dropship must assemble from `app` (for comparison):
/// standalone contents at the top, `.next/static` copied to `.next/static`,
/// `public` copied to `public`, minus files matching `**/*.map`. Symlinks are
/// copied as symlinks, modes are preserved. Writes it under `dest` (created
/// if missing) and returns dest. For the simple (non-monorepo) layout.
pub fn expected_release(app: &Path, dest: &Path) -> PathBuf {
    expected_release_at(app, dest, ".")
}

/// [`expected_release`] with `.next/static` and `public` placed beside the
/// `server.js` in `server_dir` (`apps/web` of a monorepo; `.` at the top).
pub fn expected_release_at(app: &Path, dest: &Path, server_dir: &str) -> PathBuf {
    mkdir(dest);
    copy_tree(&app.join(".next/standalone"), dest);
    let beside = dest.join(server_dir);
    copy_tree(&app.join(".next/static"), &beside.join(".next/static"));
    copy_tree(&app.join("public"), &beside.join("public"));
    dest.to_path_buf()
}

/// Copies `src` into `dst` (merging), without following symlinks and skipping
/// `*.map` files.
fn copy_tree(src: &Path, dst: &Path) {
    for entry in WalkDir::new(src).follow_links(false).sort_by_file_name() {
        let entry = entry.unwrap_or_else(|e| panic!("walk {}: {e}", src.display()));
        let rel = entry
            .path()
            .strip_prefix(src)
            .expect("walkdir yields paths under its root");
        let target = dst.join(rel);
        let meta = entry
            .path()
            .symlink_metadata()
            .unwrap_or_else(|e| panic!("lstat {}: {e}", entry.path().display()));
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&target)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", target.display()));
            set_mode(&target, meta.permissions().mode() & 0o7777);
        } else if ft.is_symlink() {
            let link = fs::read_link(entry.path())
                .unwrap_or_else(|e| panic!("readlink {}: {e}", entry.path().display()));
            symlink(&link, &target).unwrap_or_else(|e| panic!("symlink {}: {e}", target.display()));
        } else if ft.is_file() {
            if entry.file_name().to_string_lossy().ends_with(".map") {
                continue;
            }
            fs::copy(entry.path(), &target).unwrap_or_else(|e| {
                panic!(
                    "copy {} -> {}: {e}",
                    entry.path().display(),
                    target.display()
                )
            });
            set_mode(&target, meta.permissions().mode() & 0o7777);
        } else {
            panic!("unexpected file type at {}", entry.path().display());
        }
    }
}

/// `server.js`, `package.json` and the `.next` server output, in `dir` (the
/// standalone root, or `standalone/apps/web` for a monorepo).
fn write_server_part(dir: &Path, variant: &str) {
    write_file(&dir.join("server.js"), server_js(variant).as_bytes());
    write_file(
        &dir.join("package.json"),
        br#"{
  "name": "fixture-app",
  "version": "0.1.0",
  "private": true,
  "scripts": { "start": "node server.js" }
}
"#,
    );
    write_file(&dir.join(".next/BUILD_ID"), build_id(variant).as_bytes());
    write_file(
        &dir.join(".next/server/app/index.html"),
        format!(
            "<!DOCTYPE html><html><head><title>fixture</title></head>\
             <body><main>Hello from {}</main></body></html>\n",
            html_escape(variant)
        )
        .as_bytes(),
    );
    write_file(
        &dir.join(".next/server/pages-manifest.json"),
        br#"{
  "/_app": "pages/_app.js",
  "/_error": "pages/_error.js",
  "/_document": "pages/_document.js"
}
"#,
    );
    mkdir(&dir.join(".next/cache/empty"));
}

/// A pnpm-flavoured `node_modules` with symlinks, a 0755 bin script and a
/// path longer than 100 (and 155) bytes.
fn write_node_modules(nm: &Path) {
    write_file(
        &nm.join("next/package.json"),
        br#"{ "name": "next", "version": "15.0.0", "bin": { "next": "./dist/bin/next" } }
"#,
    );
    write_file_mode(
        &nm.join("next/dist/bin/next"),
        b"#!/usr/bin/env node\n\"use strict\";\nconsole.log('next (fixture stub)');\n",
        0o755,
    );
    write_file(
        &nm.join("next/dist/server/lib/a-deeply/nested/module/index.js"),
        b"\"use strict\";\nmodule.exports = function nested() { return 42; };\n",
    );
    write_file(
        &nm.join("@swc/helpers/package.json"),
        br#"{ "name": "@swc/helpers", "version": "0.5.15" }
"#,
    );
    write_file(
        &nm.join("styled-jsx/index.js"),
        b"module.exports = require('./dist/index');\n",
    );
    write_file(
        &nm.join(".pnpm/react@19/node_modules/react/index.js"),
        b"'use strict';\nmodule.exports = { version: '19.0.0' };\n",
    );
    write_file(
        &nm.join(".pnpm/react@19/node_modules/react/package.json"),
        br#"{ "name": "react", "version": "19.0.0", "main": "index.js" }
"#,
    );
    mkdir(&nm.join(".bin"));
    make_symlink("../next/dist/bin/next", &nm.join(".bin/next"));
    make_symlink(".pnpm/react@19/node_modules/react", &nm.join("react"));
    // > 155 bytes relative to the release root: needs GNU/PAX long names in tar.
    write_file(
        &nm.join(
            "next/dist/compiled/@opentelemetry-instrumentation-extremely-long-scope/\
             some-package-with-a-really-really-long-name-for-tar-tests/dist/esm/\
             internal/utilities/helpers/index.js",
        ),
        b"export const longPath = true;\n",
    );
}

/// `.next/static` and `public` in the working directory.
fn write_build_outputs(app: &Path, variant: &str) {
    let static_dir = app.join(".next/static");
    let main_js = format!(
        "(self.webpackChunk_N_E=self.webpackChunk_N_E||[]).push([[792],{{}}]);\n\
         console.log({});\n//# sourceMappingURL={MAIN_CHUNK}.map\n",
        js_string(&format!("main chunk for {variant}"))
    );
    write_file(
        &static_dir.join("chunks").join(MAIN_CHUNK),
        main_js.as_bytes(),
    );
    write_file(
        &static_dir.join("chunks").join(format!("{MAIN_CHUNK}.map")),
        format!(
            "{{\"version\":3,\"file\":\"{MAIN_CHUNK}\",\"sources\":[\"main.js\"],\"names\":[],\"mappings\":\"AAAA\",\"x_variant\":{}}}\n",
            js_string(variant)
        )
        .as_bytes(),
    );
    write_file(
        &static_dir.join("chunks/pages").join(APP_CHUNK),
        b"(self.webpackChunk_N_E=self.webpackChunk_N_E||[]).push([[888],{}]);\n",
    );
    write_file(
        &static_dir.join("css").join(APP_CSS),
        b"body{margin:0;font-family:system-ui,sans-serif}main{padding:2rem}\n",
    );
    write_file(
        &static_dir
            .join(sanitize(&build_id(variant)))
            .join("_buildManifest.js"),
        format!(
            "self.__BUILD_MANIFEST={{\"/\":[\"static/chunks/pages/{APP_CHUNK}\"]}};\
             self.__BUILD_MANIFEST_CB&&self.__BUILD_MANIFEST_CB();\n"
        )
        .as_bytes(),
    );

    let public = app.join("public");
    // A minimal ICO header followed by some fixed binary bytes.
    let mut ico = vec![0u8, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0];
    ico.extend((0u16..256).map(|i| (i.wrapping_mul(37) ^ 0xA5) as u8));
    write_file(&public.join("favicon.ico"), &ico);
    write_file(&public.join("images/hero.png"), &TINY_PNG);
    write_file(
        &public.join("images/big.bin"),
        &pseudo_random_bytes(variant, 200 * 1024),
    );
    write_file(&public.join("robots.txt"), b"User-agent: *\nAllow: /\n");
    write_file(
        &public.join("docs/read me.txt"),
        b"A file with a space in its name.\n",
    );
}

/// Source files that live next to the build and must never be shipped.
fn write_sources(app: &Path) {
    write_file(
        &app.join("src/app/page.tsx"),
        b"export default function Page() {\n  return <main>Hello</main>;\n}\n",
    );
    write_file(
        &app.join("package.json"),
        br#"{
  "name": "fixture-app",
  "version": "0.1.0",
  "private": true,
  "scripts": { "build": "next build", "start": "node .next/standalone/server.js" },
  "dependencies": { "next": "15.0.0", "react": "19.0.0" }
}
"#,
    );
    write_file(
        &app.join("next.config.js"),
        b"/** @type {import('next').NextConfig} */\nmodule.exports = { output: 'standalone' };\n",
    );
    write_file(
        &app.join(".next/cache/webpack/x.pack"),
        &pseudo_random_bytes("webpack-cache", 4096),
    );
}

fn build_id(variant: &str) -> String {
    format!("build-{variant}")
}

fn server_js(variant: &str) -> String {
    let variant_js = js_string(variant);
    let body_js = js_string(&format!(
        "<!DOCTYPE html><html><body><main>Hello from {}</main></body></html>\n",
        html_escape(variant)
    ));
    format!(
        r#"// Fixture stand-in for the server.js that `next build` writes with
// output: 'standalone'. Plain node, no dependencies.
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');

const VARIANT = {variant_js};
const INDEX = {body_js};
const port = parseInt(process.env.PORT || '3000', 10);
const host = process.env.HOSTNAME || '127.0.0.1';

const TYPES = {{
  '.html': 'text/html; charset=utf-8',
  '.js': 'application/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.json': 'application/json',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
}};

function sendFile(res, base, rel) {{
  const file = path.join(base, rel);
  if (file !== base && !file.startsWith(base + path.sep)) return false;
  let st;
  try {{ st = fs.statSync(file); }} catch (e) {{ return false; }}
  if (!st.isFile()) return false;
  const type = TYPES[path.extname(file)] || 'application/octet-stream';
  res.writeHead(200, {{ 'content-type': type, 'content-length': st.size }});
  fs.createReadStream(file).pipe(res);
  return true;
}}

const server = http.createServer((req, res) => {{
  let pathname;
  try {{ pathname = decodeURIComponent(new URL(req.url, 'http://x').pathname); }}
  catch (e) {{ res.writeHead(400); res.end('bad request\n'); return; }}
  if (pathname === '/') {{
    res.writeHead(200, {{ 'content-type': 'text/html; charset=utf-8', 'x-variant': VARIANT }});
    res.end(INDEX);
    return;
  }}
  const staticPrefix = '/_next/static/';
  if (pathname.startsWith(staticPrefix)) {{
    if (sendFile(res, path.join(__dirname, '.next', 'static'), pathname.slice(staticPrefix.length))) return;
  }} else if (sendFile(res, path.join(__dirname, 'public'), pathname.slice(1))) {{
    return;
  }}
  res.writeHead(404, {{ 'content-type': 'text/plain; charset=utf-8' }});
  res.end('not found\n');
}});

server.listen(port, host, () => {{
  console.log(`fixture app (${{VARIANT}}) listening on http://${{host}}:${{port}}`);
}});

for (const sig of ['SIGTERM', 'SIGINT']) {{
  process.on(sig, () => server.close(() => process.exit(0)));
}}
"#
    )
}

/// A valid 1x1 RGBA PNG.
const TINY_PNG: [u8; 70] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f,
    0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47, 0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Deterministic bytes seeded from `seed` (splitmix64 over an FNV-1a hash).
fn pseudo_random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut state = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn js_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes to JSON")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Creates `dir` and its missing parents, all mode 0755 (independent of umask).
fn mkdir(dir: &Path) {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.symlink_metadata().is_ok() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for p in missing.iter().rev() {
        fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        set_mode(p, 0o755);
    }
}

fn write_file(path: &Path, contents: &[u8]) {
    write_file_mode(path, contents, 0o644);
}

fn write_file_mode(path: &Path, contents: &[u8], mode: u32) {
    mkdir(path.parent().expect("fixture files have a parent dir"));
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_mode(path, mode);
}

fn make_symlink(target: &str, link: &Path) {
    mkdir(link.parent().expect("fixture links have a parent dir"));
    symlink(target, link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}
