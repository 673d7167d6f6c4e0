//! Packages that ship their native code as one optional package per platform
//! (sharp, Next's SWC, esbuild, Prisma's engines, `prebuilds/` of
//! node-gyp-build): npm installs only the runner's variant, so a release built
//! on another platform holds the wrong one. Extra variants are fine; the
//! server's must be there.

use crate::protocol::Libc;

/// The server's platform in the words of npm (`process.platform`/`arch`).
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// Node's name of the CPU (`x64`, `arm64`).
    pub cpu: &'a str,
    /// Whether the C library is musl.
    pub musl: bool,
}

/// A family of per-platform packages, as seen in the release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `@img/sharp-<os>-<cpu>`.
    Sharp,
    /// `@img/sharp-libvips-<os>-<cpu>`.
    SharpLibvips,
    /// `@next/swc-<os>-<cpu>-<abi>`.
    NextSwc,
    /// `@esbuild/<os>-<cpu>`.
    Esbuild,
    /// Prisma's `libquery_engine-<target>.so.node`.
    Prisma,
    /// `prebuilds/<os>-<cpu>/` of a package using node-gyp-build.
    Prebuilds,
    /// Any other `<name>-<os>-<cpu>[-<abi>]` package (`@parcel/watcher-linux-x64-musl`,
    /// `@rollup/rollup-linux-arm64-gnu`, `lightningcss-linux-x64-gnu`).
    Named,
}

/// One variant of a family, found at a path of the release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Which family.
    pub family: Family,
    /// What the variants of one family have in common: the package name
    /// without the platform (`@img/sharp`), or the `prebuilds` directory of
    /// one package. Wherever npm or pnpm put each variant, they group here.
    pub group: String,
    /// The variant's own directory or file in the release.
    pub path: String,
    /// Its platform name (`linux-arm64`, `darwin-x64`, `debian-openssl-3.0.x`).
    pub platform: String,
}

impl Family {
    /// What the family is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sharp => "sharp",
            Family::SharpLibvips => "sharp's libvips",
            Family::NextSwc => "Next.js SWC",
            Family::Esbuild => "esbuild",
            Family::Prisma => "the Prisma query engine",
            Family::Prebuilds => "prebuilt addons",
            Family::Named => "the package",
        }
    }

    /// The variant the server needs, as the family names it (what a message
    /// shows); `group` as in [`Variant::group`].
    pub fn wanted(self, group: &str, target: Target<'_>) -> String {
        let Target { cpu, musl } = target;
        let os = if musl { "linuxmusl" } else { "linux" };
        match self {
            Family::Named => format!(
                "{group}-linux-{cpu}{}",
                if musl {
                    "-musl"
                } else {
                    " (gnu or no libc suffix)"
                }
            ),
            Family::Sharp => format!("@img/sharp-{os}-{cpu}"),
            Family::SharpLibvips => format!("@img/sharp-libvips-{os}-{cpu}"),
            Family::NextSwc => format!(
                "@next/swc-linux-{cpu}-{}",
                if musl { "musl" } else { "gnu" }
            ),
            Family::Esbuild => format!("@esbuild/linux-{cpu}"),
            Family::Prisma => format!("libquery_engine-{}.so.node", prisma_target(target)),
            Family::Prebuilds => format!("prebuilds/linux-{cpu}/"),
        }
    }

    /// Whether a variant of this family runs on `target`.
    pub fn fits(self, platform: &str, target: Target<'_>) -> bool {
        let Target { cpu, musl } = target;
        match self {
            Family::Sharp | Family::SharpLibvips => {
                platform == "wasm32"
                    || platform == format!("{}-{cpu}", if musl { "linuxmusl" } else { "linux" })
            }
            Family::NextSwc => {
                platform.starts_with("wasm")
                    || platform == format!("linux-{cpu}-{}", if musl { "musl" } else { "gnu" })
            }
            Family::Esbuild => platform == format!("linux-{cpu}") || platform == "wasm",
            Family::Prisma => prisma_fits(platform, target),
            Family::Prebuilds => platform
                .strip_prefix("linux-")
                .is_some_and(|cpus| cpus.split('+').any(|c| c == cpu)),
            Family::Named => named_fits(platform, target),
        }
    }

    /// The fix, for a release built with npm; `group` as in [`Variant::group`].
    pub fn fix(self, group: &str, target: Target<'_>) -> String {
        let Target { cpu, musl } = target;
        let libc = if musl { "musl" } else { "glibc" };
        let npm = |package: &str| {
            format!(
                "in `build`, install the server's variant: `npm install --os=linux --cpu={cpu} --libc={libc} {package}`"
            )
        };
        match self {
            Family::Sharp | Family::SharpLibvips => npm("sharp"),
            Family::NextSwc => npm("next"),
            Family::Esbuild => npm("esbuild"),
            Family::Prisma => format!(
                "add the server's engine to the generator of schema.prisma: `binaryTargets = [\"native\", \"{}\"]`, then `prisma generate` in `build`",
                prisma_target(target)
            ),
            Family::Prebuilds => format!(
                "build on a linux {cpu} runner (node-gyp-build has no prebuilt addon for it in this package)"
            ),
            Family::Named => npm(group),
        }
    }
}

/// The Prisma binary target for the server (OpenSSL 3 assumed; `native` on a like machine).
fn prisma_target(Target { cpu, musl }: Target<'_>) -> String {
    match (musl, cpu) {
        (false, "arm64") => "linux-arm64-openssl-3.0.x".into(),
        (false, _) => "debian-openssl-3.0.x".into(),
        (true, "arm64") => "linux-musl-arm64-openssl-3.0.x".into(),
        (true, _) => "linux-musl-openssl-3.0.x".into(),
    }
}

/// Whether the Prisma engine for binary target `platform` runs on `target`
/// (its CPU and libc; the OpenSSL version is not checked).
fn prisma_fits(platform: &str, Target { cpu, musl }: Target<'_>) -> bool {
    let linux = ["debian-", "rhel-", "linux-"]
        .iter()
        .any(|prefix| platform.starts_with(prefix));
    let arm64 = platform.contains("arm64");
    linux && arm64 == (cpu == "arm64") && platform.contains("musl") == musl
}

/// The operating systems in Node's names (`process.platform`), as package names carry them.
const OSES: &[&str] = &[
    "linux",
    "linuxmusl",
    "darwin",
    "win32",
    "freebsd",
    "openbsd",
    "netbsd",
    "android",
    "sunos",
    "aix",
];

/// The CPUs in Node's names (`process.arch`), and `universal` of macOS builds.
const CPUS: &[&str] = &[
    "x64",
    "arm64",
    "arm",
    "ia32",
    "ppc64",
    "s390x",
    "riscv64",
    "loong64",
    "mips64el",
    "universal",
];

/// `(base, platform)` of a package named `<base>-<os>-<cpu>[-<abi>]`, where
/// `os` and `cpu` are Node's names of them.
fn split_named(name: &str) -> Option<(&str, &str)> {
    OSES.iter().find_map(|os| {
        let at = name.find(&format!("-{os}-"))?;
        let platform = &name[at + 1..];
        let cpu = platform.split('-').nth(1)?;
        (at > 0 && CPUS.contains(&cpu)).then(|| (&name[..at], platform))
    })
}

/// Whether a `<os>-<cpu>[-<abi>]` package runs on `target`: Linux, the
/// server's CPU, and musl named exactly when the server has musl.
fn named_fits(platform: &str, Target { cpu, musl }: Target<'_>) -> bool {
    let mut parts = platform.split('-');
    let os = parts.next().unwrap_or_default();
    let its_cpu = parts.next().unwrap_or_default();
    let abi: Vec<&str> = parts.collect();
    let named_musl = os == "linuxmusl" || abi.contains(&"musl");
    (os == "linux" || os == "linuxmusl") && its_cpu == cpu && named_musl == musl
}

/// The variant `path` (a path of the release) is or lies in, if any.
pub fn variant_of(path: &str) -> Option<Variant> {
    let parts: Vec<&str> = path.split('/').collect();
    for (i, window) in parts.windows(3).enumerate() {
        let variant = |family, group: &str, platform: &str| {
            Some(Variant {
                family,
                group: group.to_owned(),
                path: parts[..i + 3].join("/"),
                platform: platform.to_owned(),
            })
        };
        match window {
            ["node_modules", "@img", name] => {
                if let Some(platform) = name.strip_prefix("sharp-libvips-") {
                    return variant(Family::SharpLibvips, "@img/sharp-libvips", platform);
                }
                if let Some(platform) = name.strip_prefix("sharp-") {
                    return variant(Family::Sharp, "@img/sharp", platform);
                }
            }
            ["node_modules", "@next", name] => {
                if let Some(platform) = name.strip_prefix("swc-") {
                    return variant(Family::NextSwc, "@next/swc", platform);
                }
            }
            ["node_modules", "@esbuild", platform] => {
                return variant(Family::Esbuild, "@esbuild", platform);
            }
            ["node_modules", scope, name] if scope.starts_with('@') => {
                if let Some((base, platform)) = split_named(name) {
                    return variant(Family::Named, &format!("{scope}/{base}"), platform);
                }
            }
            _ => {}
        }
    }
    for (i, window) in parts.windows(2).enumerate() {
        let found = match window {
            ["prebuilds", platform] => Some((Family::Prebuilds, parts[..=i].join("/"), *platform)),
            ["node_modules", name] if !name.starts_with('@') => {
                split_named(name).map(|(base, platform)| (Family::Named, base.to_owned(), platform))
            }
            _ => None,
        };
        if let Some((family, group, platform)) = found {
            return Some(Variant {
                family,
                group,
                path: parts[..i + 2].join("/"),
                platform: platform.to_owned(),
            });
        }
    }
    let name = parts.last()?;
    let engine = name
        .strip_prefix("libquery_engine-")
        .or_else(|| name.strip_prefix("query_engine-"))?;
    let platform = [".so.node", ".dylib.node", ".dll.node"]
        .iter()
        .find_map(|suffix| engine.strip_suffix(suffix))?;
    Some(Variant {
        family: Family::Prisma,
        group: "prisma".into(),
        path: path.to_owned(),
        platform: platform.to_owned(),
    })
}

/// Node's name (`process.arch`) for a CPU as `uname -m` names it.
pub fn node_cpu(arch: &str) -> &str {
    match arch {
        "x86_64" | "amd64" => "x64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i486" | "i586" | "i686" => "ia32",
        "ppc64le" | "ppc64" => "ppc64",
        arm if arm.starts_with("arm") => "arm",
        other => other,
    }
}

/// Whether the libc is musl.
pub fn is_musl(libc: &Libc) -> bool {
    matches!(libc, Libc::Musl)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X64: Target<'static> = Target {
        cpu: "x64",
        musl: false,
    };
    const ARM64_MUSL: Target<'static> = Target {
        cpu: "arm64",
        musl: true,
    };

    fn platform_of(path: &str) -> (Family, String, String) {
        let v = variant_of(path).unwrap();
        (v.family, v.path, v.platform)
    }

    #[test]
    fn variants_are_recognised_by_their_paths() {
        assert_eq!(
            platform_of("node_modules/@img/sharp-linux-arm64/lib/sharp-linux-arm64.node"),
            (
                Family::Sharp,
                "node_modules/@img/sharp-linux-arm64".into(),
                "linux-arm64".into()
            )
        );
        assert_eq!(
            platform_of("node_modules/.pnpm/@img+sharp-libvips-linuxmusl-x64@1.0.4/node_modules/@img/sharp-libvips-linuxmusl-x64/lib/libvips-cpp.so.42"),
            (
                Family::SharpLibvips,
                "node_modules/.pnpm/@img+sharp-libvips-linuxmusl-x64@1.0.4/node_modules/@img/sharp-libvips-linuxmusl-x64".into(),
                "linuxmusl-x64".into()
            )
        );
        assert_eq!(
            platform_of("node_modules/@next/swc-linux-x64-gnu/next-swc.linux-x64-gnu.node").2,
            "linux-x64-gnu"
        );
        assert_eq!(
            platform_of("node_modules/@esbuild/darwin-arm64/bin/esbuild").2,
            "darwin-arm64"
        );
        assert_eq!(
            platform_of("node_modules/.prisma/client/libquery_engine-debian-openssl-3.0.x.so.node"),
            (
                Family::Prisma,
                "node_modules/.prisma/client/libquery_engine-debian-openssl-3.0.x.so.node".into(),
                "debian-openssl-3.0.x".into()
            )
        );
        let prebuilt =
            variant_of("node_modules/bufferutil/prebuilds/darwin-x64+arm64/node.napi.node")
                .unwrap();
        assert_eq!(prebuilt.group, "node_modules/bufferutil/prebuilds");
        assert_eq!(prebuilt.platform, "darwin-x64+arm64");
        let watcher = variant_of(
            "node_modules/.pnpm/@parcel+watcher-linux-x64-musl@2.4.1/node_modules/@parcel/watcher-linux-x64-musl/watcher.node",
        )
        .unwrap();
        assert_eq!(
            (watcher.family, watcher.group.as_str()),
            (Family::Named, "@parcel/watcher")
        );
        assert_eq!(watcher.platform, "linux-x64-musl");
        let css =
            variant_of("node_modules/lightningcss-darwin-arm64/lightningcss.darwin-arm64.node")
                .unwrap();
        assert_eq!(
            (css.group.as_str(), css.platform.as_str()),
            ("lightningcss", "darwin-arm64")
        );
        assert_eq!(variant_of("node_modules/next/dist/server/next.js"), None);
        assert_eq!(variant_of("node_modules/is-linux-friendly/index.js"), None);
        assert_eq!(variant_of("node_modules/@img/colour/index.js"), None);
    }

    #[test]
    fn the_servers_variant_fits_and_others_do_not() {
        assert!(Family::Sharp.fits("linux-x64", X64));
        assert!(Family::Sharp.fits("wasm32", X64));
        assert!(!Family::Sharp.fits("linuxmusl-x64", X64));
        assert!(!Family::Sharp.fits("linux-arm64", X64));
        assert!(Family::Sharp.fits("linuxmusl-arm64", ARM64_MUSL));
        assert!(Family::SharpLibvips.fits("linux-x64", X64));
        assert!(Family::NextSwc.fits("linux-x64-gnu", X64));
        assert!(!Family::NextSwc.fits("linux-x64-musl", X64));
        assert!(Family::NextSwc.fits("linux-arm64-musl", ARM64_MUSL));
        assert!(Family::Esbuild.fits("linux-x64", X64));
        assert!(!Family::Esbuild.fits("linux-arm64", X64));
        assert!(Family::Prisma.fits("debian-openssl-3.0.x", X64));
        assert!(Family::Prisma.fits("rhel-openssl-1.1.x", X64));
        assert!(!Family::Prisma.fits("linux-arm64-openssl-3.0.x", X64));
        assert!(!Family::Prisma.fits("darwin", X64));
        assert!(Family::Prisma.fits("linux-musl-arm64-openssl-3.0.x", ARM64_MUSL));
        assert!(Family::Prebuilds.fits("linux-x64", X64));
        assert!(!Family::Prebuilds.fits("darwin-x64+arm64", X64));
        assert!(Family::Named.fits("linux-x64-gnu", X64));
        assert!(Family::Named.fits("linux-x64", X64));
        assert!(!Family::Named.fits("linux-x64-musl", X64));
        assert!(!Family::Named.fits("darwin-x64", X64));
        assert!(Family::Named.fits("linux-arm64-musl", ARM64_MUSL));
        assert!(Family::Named.fits("linuxmusl-arm64", ARM64_MUSL));
        assert!(!Family::Named.fits("linux-arm64-gnu", ARM64_MUSL));
    }

    #[test]
    fn fixes_name_the_servers_platform() {
        assert_eq!(
            Family::Sharp.fix(
                "@img/sharp",
                Target {
                    cpu: "arm64",
                    musl: false
                }
            ),
            "in `build`, install the server's variant: `npm install --os=linux --cpu=arm64 --libc=glibc sharp`"
        );
        assert_eq!(
            Family::Sharp.wanted("@img/sharp", ARM64_MUSL),
            "@img/sharp-linuxmusl-arm64"
        );
        assert_eq!(
            Family::Prisma.wanted("prisma", X64),
            "libquery_engine-debian-openssl-3.0.x.so.node"
        );
        assert_eq!(
            Family::Named.fix("@parcel/watcher", X64),
            "in `build`, install the server's variant: `npm install --os=linux --cpu=x64 --libc=glibc @parcel/watcher`"
        );
        assert_eq!(node_cpu("aarch64"), "arm64");
        assert_eq!(node_cpu("x86_64"), "x64");
    }
}
