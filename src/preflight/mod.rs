//! Preflight: will this release run on that server? Between `package` and
//! `transport`'s stream: once the agent has said what the server is (CPU,
//! libc, Node; see [`Platform`]), the release is checked against it before a
//! byte of it is sent — every `*.node` addon's (and shared library's) ELF
//! machine and libc, per-platform packages (see [`packages`]) and `engines.node`.

pub(crate) mod elf;
mod packages;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use nodejs_semver::{Range, Version};

use crate::error::{Error, Mismatch, Result};
use crate::manifest::Kind;
use crate::package::Release;
use crate::protocol::{Libc, NodeRuntime, Platform};
use packages::{Family, Target, Variant};

/// Refuses (exit 2) a release that cannot run on `host`, whose platform is `platform`.
pub fn check(host: &str, release: &Release, platform: &Platform) -> Result<()> {
    let mut mismatches = addons(release, platform);
    mismatches.extend(node(release, platform));
    if mismatches.is_empty() {
        return Ok(());
    }
    Err(Error::Unrunnable {
        host: host.to_owned(),
        platform: describe(platform),
        mismatches,
    })
}

/// The platform as messages name it: `linux x86_64, glibc 2.36, Node v20.11.1`.
pub fn describe(platform: &Platform) -> String {
    let libc = match &platform.libc {
        Libc::Glibc { version } => format!("glibc {version}"),
        Libc::Musl => "musl".into(),
        Libc::Unknown => "unknown libc".into(),
    };
    let node = match &platform.node {
        NodeRuntime::Version(version) => format!("Node {version}"),
        NodeRuntime::Missing => "no Node".into(),
        NodeRuntime::Broken(_) => "Node that does not run".into(),
    };
    format!("linux {}, {libc}, {node}", platform.arch)
}

/// The per-platform packages and native addons that do not fit.
fn addons(release: &Release, platform: &Platform) -> Vec<Mismatch> {
    let target = Target {
        cpu: packages::node_cpu(&platform.arch),
        musl: packages::is_musl(&platform.libc),
    };
    let mut families: BTreeMap<(Family, String), Vec<Variant>> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (index, entry) in release.manifest.entries.iter().enumerate() {
        let variant = packages::variant_of(&entry.path);
        let fits = variant
            .as_ref()
            .is_none_or(|v| v.family.fits(&v.platform, target) && !other_libc(&entry.path, target));
        if let Some(variant) = variant {
            let key = (variant.family, variant.group.clone());
            let known = families.entry(key).or_default();
            if !known.iter().any(|v| v.path == variant.path) {
                known.push(variant);
            }
        }
        // Addons of other platforms' variants are never loaded here.
        if fits && is_native(&entry.path) && matches!(entry.kind, Kind::File { .. }) {
            mismatches.extend(addon(&entry.path, release.source(index), platform, target));
        }
    }
    for ((family, group), variants) in families {
        if variants.iter().any(|v| family.fits(&v.platform, target)) {
            continue;
        }
        let platforms: Vec<&str> = variants.iter().map(|v| v.platform.as_str()).collect();
        mismatches.push(Mismatch {
            file: variants[0].path.clone(),
            problem: format!(
                "is {} for {} only; this server needs `{}`",
                match family {
                    Family::Named => format!("`{group}`"),
                    _ => family.name().to_owned(),
                },
                platforms.join(", "),
                family.wanted(&group, target)
            ),
            fix: family.fix(&group, target),
        });
    }
    mismatches
}

/// Whether `path` names native code an addon loads: a `*.node` addon, or a
/// shared library of a package (sharp's `libvips-cpp.so.42` needs more of
/// glibc than its addon does; a `.so` the app serves from `public/` is no code
/// of the server's).
fn is_native(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    let library = name.ends_with(".so") || name.contains(".so.");
    name.ends_with(".node") || (library && path.split('/').any(|part| part == "node_modules"))
}

/// A node-gyp-build prebuilt tagged for the other libc (`node.napi.musl.node`).
fn other_libc(path: &str, target: Target<'_>) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    let other = if target.musl { ".glibc." } else { ".musl." };
    path.contains("/prebuilds/") && name.contains(other)
}

/// What keeps the addon at `path` (local file `local`) from loading on `platform`.
fn addon(path: &str, local: &Path, platform: &Platform, target: Target<'_>) -> Option<Mismatch> {
    let needs = File::open(local).ok().map(|file| elf::read(&file));
    let mismatch = |problem: String, fix: String| {
        Some(Mismatch {
            file: path.to_owned(),
            problem,
            fix,
        })
    };
    let rebuild = format!(
        "build on a linux {} runner with {}, so that npm installs or compiles the addon for the server",
        platform.arch,
        if target.musl {
            "musl (e.g. an Alpine container)"
        } else {
            "glibc"
        }
    );
    let needs = match needs? {
        Ok(needs) => needs,
        Err(elf::NotElf) => {
            return mismatch(
                "is not a Linux (ELF) binary: built for macOS or Windows?".into(),
                rebuild,
            );
        }
    };
    if !machine_fits(needs.machine, &platform.arch) {
        return mismatch(
            format!("is built for {}", elf::machine_name(needs.machine)),
            rebuild,
        );
    }
    let musl = needs
        .needed
        .iter()
        .any(|lib| lib.starts_with("libc.musl-") || lib.starts_with("ld-musl-"));
    let glibc = needs.glibc.is_some() || needs.needed.iter().any(|lib| lib == "libc.so.6");
    match &platform.libc {
        Libc::Glibc { .. } if musl => mismatch(
            "is built for musl libc (Alpine); this server has glibc".into(),
            rebuild,
        ),
        Libc::Musl if glibc => mismatch(
            "is built for glibc; this server has musl libc".into(),
            rebuild,
        ),
        Libc::Glibc { version } => {
            let (major, minor) = needs.glibc?;
            let server = elf::glibc_version(&format!("GLIBC_{version}"))?;
            (server < (major, minor)).then(|| Mismatch {
                file: path.to_owned(),
                problem: format!("needs glibc {major}.{minor}; this server has {version}"),
                fix: format!("build on a runner whose glibc is {version} or older (an older runner image, or a container of the server's distribution), or upgrade the server"),
            })
        }
        Libc::Musl | Libc::Unknown => None,
    }
}

/// Whether code for ELF `machine` runs on a CPU `uname -m` calls `arch`; a CPU
/// this table does not know is given the benefit of the doubt.
fn machine_fits(machine: u16, arch: &str) -> bool {
    elf::machine_of(arch).is_none_or(|wanted| wanted == machine)
}

/// `engines.node` of the app's `package.json` against the server's Node.
fn node(release: &Release, platform: &Platform) -> Vec<Mismatch> {
    let version = match &platform.node {
        NodeRuntime::Version(version) => version,
        NodeRuntime::Missing => return Vec::new(),
        NodeRuntime::Broken(said) => {
            return vec![Mismatch {
                file: "node".into(),
                problem: format!("(the server's) does not run: {said}"),
                fix: "install a Node that runs on this server for the deploy user (e.g. with nvm); its official builds need glibc 2.28 or newer since Node 18".into(),
            }];
        }
    };
    package_jsons(&release.server_dir)
        .into_iter()
        .filter_map(|path| engines_mismatch(release, path, version))
        .collect()
}

/// The `engines.node` of the `package.json` at `path` of the release, if the
/// server's Node `version` does not satisfy it.
fn engines_mismatch(release: &Release, path: String, version: &str) -> Option<Mismatch> {
    let index = release
        .manifest
        .entries
        .iter()
        .position(|e| e.path == path)?;
    let text = std::fs::read_to_string(release.source(index)).ok()?;
    let wanted = engines_node(&text)?;
    let fits = match (
        Range::parse(&wanted),
        Version::parse(version.trim_start_matches('v')),
    ) {
        (Ok(range), Ok(version)) => range.satisfies(&version),
        _ => true,
    };
    (!fits).then(|| Mismatch {
        file: path,
        problem: format!("wants Node `{wanted}` (`engines.node`); the server runs {version}"),
        fix: format!("install a Node that satisfies `{wanted}` for the deploy user on the server (the first `node` on its PATH, e.g. with nvm), or change `engines.node`"),
    })
}

/// The `package.json` files whose `engines.node` count: the app's, beside
/// `server.js`, and in a monorepo also the workspace root's.
fn package_jsons(server_dir: &str) -> Vec<String> {
    if server_dir == "." || server_dir.is_empty() {
        vec!["package.json".into()]
    } else {
        vec![format!("{server_dir}/package.json"), "package.json".into()]
    }
}

/// The `engines.node` range of a `package.json`, if it has one.
fn engines_node(text: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let range = json.get("engines")?.get("node")?.as_str()?.trim();
    (!range.is_empty()).then(|| range.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn satisfied(range: &str, version: &str) -> bool {
        Range::parse(range)
            .unwrap()
            .satisfies(&Version::parse(version.trim_start_matches('v')).unwrap())
    }

    /// npm's range syntax, as `engines.node` uses it.
    #[test]
    fn engines_ranges_follow_npm() {
        assert!(satisfied(">=18.17.0", "v20.11.1"));
        assert!(!satisfied(">=99", "v20.11.1"));
        assert!(satisfied("^18.18.0 || ^19.8.0 || >= 20.0.0", "v22.0.0"));
        assert!(!satisfied("^18.18.0 || ^19.8.0 || >= 20.0.0", "v18.17.1"));
        assert!(satisfied("18.x || 20.x", "v20.20.2"));
        assert!(satisfied("20 - 22", "v21.1.0"));
        assert!(!satisfied("~20.10", "v20.11.0"));
    }

    #[test]
    fn engines_node_is_read_from_package_json() {
        assert_eq!(
            engines_node(r#"{"engines":{"node":">=20"}}"#).as_deref(),
            Some(">=20")
        );
        assert_eq!(engines_node(r#"{"engines":{"npm":">=9"}}"#), None);
        assert_eq!(engines_node(r#"{"engines":{"node":" "}}"#), None);
        assert_eq!(engines_node("not json"), None);
        assert_eq!(package_jsons("."), ["package.json"]);
        assert_eq!(
            package_jsons("apps/web"),
            ["apps/web/package.json", "package.json"]
        );
    }

    #[test]
    fn the_platform_reads_like_uname() {
        let platform = Platform {
            arch: "aarch64".into(),
            libc: Libc::Glibc {
                version: "2.36".into(),
            },
            node: NodeRuntime::Version("v20.11.1".into()),
        };
        assert_eq!(
            describe(&platform),
            "linux aarch64, glibc 2.36, Node v20.11.1"
        );
    }

    #[test]
    fn machines_are_compared_only_for_known_cpus() {
        assert!(machine_fits(62, "x86_64"));
        assert!(!machine_fits(183, "x86_64"));
        assert!(machine_fits(183, "aarch64"));
        assert!(!machine_fits(62, "aarch64"));
        assert!(machine_fits(40, "armv7l"));
        assert!(machine_fits(62, "sparc64"));
    }

    #[test]
    fn addons_and_shared_libraries_are_native_code() {
        assert!(is_native("node_modules/x/build/Release/x.node"));
        assert!(is_native(
            "node_modules/@img/sharp-libvips-linux-x64/lib/libvips-cpp.so.42"
        ));
        assert!(is_native(
            "node_modules/.prisma/client/libquery_engine-debian-openssl-3.0.x.so.node"
        ));
        assert!(is_native("node_modules/x/lib/libx.so"));
        assert!(!is_native("node_modules/x/index.js"));
        assert!(!is_native("node_modules/x.so.js/index.js"));
        assert!(!is_native("public/docs/also.sorted.txt"));
        assert!(!is_native("public/downloads/libdemo.so"));
        assert!(is_native("build/Release/addon.node"));
    }

    #[test]
    fn prebuilds_for_the_other_libc_are_not_loaded() {
        let glibc = Target {
            cpu: "x64",
            musl: false,
        };
        assert!(other_libc(
            "node_modules/x/prebuilds/linux-x64/node.napi.musl.node",
            glibc
        ));
        assert!(!other_libc(
            "node_modules/x/prebuilds/linux-x64/node.napi.glibc.node",
            glibc
        ));
        assert!(!other_libc(
            "node_modules/x/build/Release/x.musl.node",
            glibc
        ));
    }
}
