//! The GitHub Action face: when `GITHUB_ACTIONS=true` and no sub-command is
//! given, the options come from the step's `INPUT_<NAME>` variables and are
//! turned into the argument vector the CLI would have received.
//!
//! GitHub keeps hyphens (`remote-path` arrives as `INPUT_REMOTE-PATH`); the
//! underscore spelling is accepted too, and an empty input counts as unset.
//! Input `command` picks the sub-command (default `deploy`). Inputs that are
//! not CLI flags (`env`, `github-token`, `environment`, `environment-url`) are
//! kept in [`ActionRun`], available through [`current`].
//!
//! Adding an input is one line in [`INPUTS`]. An input whose flag the chosen
//! sub-command does not take is skipped; clap's own definition (`cli.rs`) is
//! the judge, so a flag added there starts working here without other changes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::error::Error;
use crate::{dotenv, github, report};

/// How an input becomes command-line arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `--flag=<value>`, surrounding blanks and new lines trimmed.
    Value,
    /// `--flag=<value>` exactly as given (keys, passphrases, shell commands).
    Text,
    /// `true` gives `--flag`, `false` nothing, anything else is an input error.
    Switch,
    /// One `--flag=<line>` per non-empty line.
    List,
    /// Not a flag: kept in [`ActionRun`].
    Kept,
}

/// Every input the Action knows: (input name, CLI flag, kind). The flag is
/// passed only when the chosen sub-command has it (see `cli.rs`).
const INPUTS: &[(&str, &str, Kind)] = &[
    ("command", "", Kind::Kept),
    // Connection.
    ("host", "host", Kind::Value),
    ("port", "port", Kind::Value),
    ("user", "user", Kind::Value),
    ("key", "key", Kind::Text),
    ("key-passphrase", "key-passphrase", Kind::Text),
    ("known-hosts", "known-hosts", Kind::Text),
    ("host-fingerprint", "host-fingerprint", Kind::Value),
    (
        "insecure-skip-host-key-check",
        "insecure-skip-host-key-check",
        Kind::Switch,
    ),
    ("remote-path", "remote-path", Kind::Value),
    ("lock-timeout", "lock-timeout", Kind::Value),
    ("max-parallel", "max-parallel", Kind::Value),
    ("dry-run", "dry-run", Kind::Switch),
    // EC2 fleets.
    ("ec2-hosts", "ec2-hosts", Kind::List),
    ("ec2-address", "ec2-address", Kind::Value),
    ("ssh-ingress", "ssh-ingress", Kind::Value),
    ("aws-region", "aws-region", Kind::Value),
    ("target-group", "target-group", Kind::List),
    ("drain-timeout", "drain-timeout", Kind::Value),
    // Source.
    ("working-directory", "working-directory", Kind::Value),
    ("build", "build", Kind::Text),
    ("source", "source", Kind::Value),
    ("exclude", "exclude", Kind::List),
    // Deploy.
    ("app", "app", Kind::Value),
    ("release", "release", Kind::Value),
    ("keep-releases", "keep-releases", Kind::Value),
    ("keep-assets", "keep-assets", Kind::Value),
    ("shared", "shared", Kind::List),
    ("process-manager", "process-manager", Kind::Value),
    ("start", "start", Kind::Value),
    ("strategy", "strategy", Kind::Value),
    ("app-port", "app-port", Kind::Value),
    ("nginx-upstream", "nginx-upstream", Kind::Value),
    ("nginx-reload", "nginx-reload", Kind::Value),
    ("health-path", "health-path", Kind::Value),
    ("health-timeout", "health-timeout", Kind::Value),
    ("rollout", "rollout", Kind::Value),
    ("batch-size", "batch-size", Kind::Value),
    ("env", "env", Kind::Text),
    ("github-token", "github-token", Kind::Text),
    ("environment", "environment", Kind::Value),
    ("environment-url", "environment-url", Kind::Value),
    // Rollback and package.
    ("to", "to", Kind::Value),
    ("output", "output", Kind::Value),
];

/// The sub-commands input `command` may name.
const COMMANDS: &[&str] = &["deploy", "rollback", "releases", "package"];

/// Whether `args` (program name included) ask for the Action face:
/// `GITHUB_ACTIONS=true` and no argument after the program name.
pub fn applies(args: &[OsString]) -> bool {
    args.len() <= 1 && github::is_actions()
}

/// Reads the inputs from this process's environment (see [`args_from_env`]),
/// and returns the argument vector.
pub fn load() -> Result<Vec<OsString>, Error> {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with("INPUT_")
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect();
    args_from_env(&vars)
}

/// Reports `err` (in Actions an `::error` annotation with the hint, otherwise
/// the usual message and hint on stderr) and returns its exit status.
pub fn fail(err: &Error) -> ExitCode {
    let mut message = err.to_string();
    if let Some(hint) = err.hint() {
        message.push_str("\nhint: ");
        message.push_str(&hint);
    }
    if github::is_actions() {
        github::error_annotation("dropship", &message);
    } else {
        report::print_error(err);
    }
    ExitCode::from(err.exit_status() as u8)
}

/// Turns the `INPUT_*` variables in `vars` into the argument vector for clap,
/// program name first. It never becomes a real process argv (it is parsed in
/// this process), so the key and other secrets in it are not visible to other
/// users. Before
/// anything else is printed, the secrets (`key`, `key-passphrase`,
/// `github-token`, every value of `env`) are masked; unknown inputs are then
/// warned about (with the closest known name). A bad value is an
/// [`Error::Input`] (exit 2) naming the input.
pub fn args_from_env(vars: &[(String, String)]) -> Result<Vec<OsString>, Error> {
    let inputs = Inputs::read(vars)?;
    for secret in inputs.secrets() {
        github::add_mask(&secret);
    }
    for warning in inputs.warnings() {
        if github::is_actions() {
            github::warning_annotation("dropship", &warning);
        } else {
            eprintln!("warning: {warning}");
        }
    }
    inputs.plan()
}

/// The inputs that were set, by canonical name (`remote-path`).
struct Inputs {
    values: BTreeMap<String, String>,
    /// How each name was spelled in the environment (for messages).
    spelled: BTreeMap<String, String>,
}

impl Inputs {
    fn read(vars: &[(String, String)]) -> Result<Inputs, Error> {
        // GitHub's spelling (`INPUT_REMOTE-PATH`) wins over `INPUT_REMOTE_PATH`.
        let mut chosen: BTreeMap<String, (&str, &str)> = BTreeMap::new();
        for (name, value) in vars {
            let Some(input) = name.strip_prefix("INPUT_") else {
                continue;
            };
            if value.trim().is_empty() || input.is_empty() {
                continue;
            }
            let key = input.replace('-', "_").to_ascii_uppercase();
            let hyphenated = input.contains('-');
            match chosen.get(&key) {
                Some((earlier, _)) if earlier.contains('-') || !hyphenated => {}
                _ => {
                    chosen.insert(key, (input, value));
                }
            }
        }
        let spelled = chosen
            .iter()
            .map(|(key, (input, _))| (canonical(key), input.to_ascii_lowercase()))
            .collect();
        let values: HashMap<String, String> = envy::prefixed("INPUT_")
            .from_iter(
                chosen
                    .iter()
                    .map(|(key, (_, value))| (format!("INPUT_{key}"), value.to_string())),
            )
            .map_err(|err| {
                Error::input(
                    "inputs",
                    format!("cannot read the step's inputs: {err}"),
                    "check the `with:` block of the workflow step",
                )
            })?;
        let values = values
            .into_iter()
            .map(|(key, value)| (canonical(&key), value))
            .collect();
        Ok(Inputs { values, spelled })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Values to hide in the log.
    fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = ["key", "key-passphrase", "github-token"]
            .iter()
            .filter_map(|name| self.get(name).map(str::to_string))
            .collect();
        if let Some(text) = self.get("env") {
            match dotenv::parse(text) {
                Ok(pairs) => secrets.extend(pairs.into_iter().map(|(_, value)| value)),
                // Unreadable: hide every line rather than guess where values are.
                Err(_) => secrets.push(text.to_string()),
            }
        }
        secrets
    }

    /// One warning per input nobody knows, naming the closest known one, and
    /// per known input whose flag no sub-command has yet.
    fn warnings(&self) -> Vec<String> {
        let root = crate::cli::Cli::command();
        let unsupported = INPUTS
            .iter()
            .filter(|(name, flag, kind)| {
                *kind != Kind::Kept
                    && self.values.contains_key(*name)
                    && !root.get_subcommands().any(|sub| has_flag(sub, flag))
            })
            .map(|(name, _, _)| {
                format!(
                    "input `{name}` is not supported by this version of dropship yet; it is ignored"
                )
            });
        let unknown = self
            .values
            .keys()
            .filter(|name| !INPUTS.iter().any(|(input, _, _)| input == name))
            .map(|name| {
                let spelled = self.spelled.get(name).unwrap_or(name);
                let closest = INPUTS
                    .iter()
                    .map(|(input, _, _)| *input)
                    .min_by_key(|input| distance(name, input))
                    .filter(|input| distance(name, input) <= 3.max(name.len() / 3));
                match closest {
                    Some(closest) => {
                        format!("unknown input `{spelled}` is ignored; did you mean `{closest}`?")
                    }
                    None => format!(
                        "unknown input `{spelled}` is ignored; known inputs: {}",
                        INPUTS
                            .iter()
                            .map(|(input, _, _)| *input)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            });
        unknown.chain(unsupported).collect()
    }

    fn plan(&self) -> Result<Vec<OsString>, Error> {
        let command = self
            .get("command")
            .map_or("deploy", str::trim)
            .to_ascii_lowercase();
        if !COMMANDS.contains(&command.as_str()) {
            return Err(Error::input(
                "command",
                format!("`{command}` is not a command dropship runs as an Action"),
                format!("use one of: {}", COMMANDS.join(", ")),
            ));
        }
        let root = crate::cli::Cli::command();
        let Some(sub) = root.find_subcommand(&command) else {
            return Err(Error::input(
                "command",
                format!("`{command}` is not available in this version of dropship"),
                format!("use one of: {}", COMMANDS.join(", ")),
            ));
        };
        let mut args: Vec<OsString> = vec!["dropship".into(), command.clone().into()];
        for &(name, flag, kind) in INPUTS {
            let Some(value) = self.get(name) else {
                continue;
            };
            if kind == Kind::Kept {
                continue;
            }
            if kind == Kind::Switch && !parse_bool(name, value)? {
                continue;
            }
            // Another sub-command's input (or one `warnings` reported as unsupported).
            if !has_flag(sub, flag) {
                continue;
            }
            match kind {
                Kind::Value => args.push(format!("--{flag}={}", value.trim()).into()),
                Kind::Text => args.push(format!("--{flag}={value}").into()),
                Kind::Switch => args.push(format!("--{flag}").into()),
                Kind::List => args.extend(
                    value
                        .lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty())
                        .map(|line| OsString::from(format!("--{flag}={line}"))),
                ),
                Kind::Kept => {}
            }
        }
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let given = args
                .iter()
                .any(|a| a.to_string_lossy().starts_with(&format!("--{long}=")));
            let from_env = arg
                .get_env()
                .is_some_and(|var| std::env::var_os(var).is_some());
            if arg.is_required_set() && !given && !from_env {
                let name = INPUTS
                    .iter()
                    .find(|(_, flag, _)| *flag == long)
                    .map_or("command", |(input, _, _)| input);
                return Err(Error::input(
                    name,
                    format!("is required by `{command}`"),
                    format!("add `{name}: …` under `with:` in the workflow step"),
                ));
            }
        }
        Ok(args)
    }
}

/// Whether sub-command `sub` has the flag `--<flag>`.
fn has_flag(sub: &clap::Command, flag: &str) -> bool {
    sub.get_arguments().any(|arg| arg.get_long() == Some(flag))
}

/// `REMOTE_PATH` or `remote_path` → `remote-path`.
fn canonical(key: &str) -> String {
    key.to_ascii_lowercase().replace('_', "-")
}

/// A boolean input, spelled as YAML 1.2 and `@actions/core` accept it.
fn parse_bool(name: &'static str, value: &str) -> Result<bool, Error> {
    match value.trim() {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        _ => Err(Error::input(
            name,
            "must be `true` or `false`",
            format!("set `{name}: true` or `{name}: false`, or leave it out"),
        )),
    }
}

/// Levenshtein distance, to suggest the input a typo meant.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{ArgAction, Parser};

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn plan(list: &[(&str, &str)]) -> Result<Vec<OsString>, Error> {
        Inputs::read(&vars(list))?.plan()
    }

    fn args(run: &[OsString]) -> Vec<String> {
        run.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn hyphen_and_underscore_spellings_map_to_flags() {
        let run = plan(&[
            ("INPUT_HOST", " deploy@example.com \n"),
            ("INPUT_REMOTE-PATH", "/srv/app"),
            ("INPUT_WORKING_DIRECTORY", "web"),
            ("INPUT_KEY", "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"),
            ("INPUT_DRY-RUN", "true"),
            ("INPUT_INSECURE-SKIP-HOST-KEY-CHECK", "false"),
            ("INPUT_EXCLUDE", "**/*.map\n\n  *.log \n"),
            ("PATH", "/usr/bin"),
        ])
        .unwrap();
        assert_eq!(
            args(&run),
            [
                "dropship",
                "deploy",
                "--host=deploy@example.com",
                "--key=-----BEGIN KEY-----\nabc\n-----END KEY-----\n",
                "--remote-path=/srv/app",
                "--dry-run",
                "--working-directory=web",
                "--exclude=**/*.map",
                "--exclude=*.log",
            ]
        );
        // clap accepts the vector.
        crate::cli::Cli::try_parse_from(&run).unwrap();
    }

    #[test]
    fn hyphen_spelling_wins_and_empty_counts_as_unset() {
        let run = plan(&[
            ("INPUT_HOST", "local"),
            ("INPUT_REMOTE_PATH", "/underscore"),
            ("INPUT_REMOTE-PATH", "/hyphen"),
            ("INPUT_USER", ""),
            ("INPUT_PORT", "  "),
            ("INPUT_LOCK_TIMEOUT", "30"),
            ("INPUT_LOCK-TIMEOUT", ""),
        ])
        .unwrap();
        assert_eq!(
            args(&run),
            [
                "dropship",
                "deploy",
                "--host=local",
                "--remote-path=/hyphen",
                "--lock-timeout=30"
            ]
        );
    }

    #[test]
    fn commands_take_only_their_own_flags() {
        let common = [
            ("INPUT_HOST", "local"),
            ("INPUT_REMOTE-PATH", "/srv/app"),
            ("INPUT_WORKING-DIRECTORY", "web"),
            ("INPUT_TO", "20260101000000-abc"),
            ("INPUT_OUTPUT", "out.tar.zst"),
        ];
        let with = |command: &str| {
            let mut list = common.to_vec();
            list.push(("INPUT_COMMAND", command));
            args(&plan(&list).unwrap())
        };
        assert_eq!(
            with("rollback"),
            [
                "dropship",
                "rollback",
                "--host=local",
                "--remote-path=/srv/app",
                "--to=20260101000000-abc"
            ]
        );
        assert_eq!(
            with(" Releases "),
            [
                "dropship",
                "releases",
                "--host=local",
                "--remote-path=/srv/app"
            ]
        );
        assert_eq!(
            with("package"),
            [
                "dropship",
                "package",
                "--working-directory=web",
                "--output=out.tar.zst"
            ]
        );
    }

    #[test]
    fn env_and_github_inputs_become_flags() {
        let run = plan(&[
            ("INPUT_HOST", "local"),
            ("INPUT_REMOTE-PATH", "/srv/app"),
            ("INPUT_GITHUB-TOKEN", "ghs_abc"),
            ("INPUT_ENVIRONMENT-URL", "https://example.com "),
            ("INPUT_ENV", "export A=1\nB=\"two\nlines\"\n"),
        ])
        .unwrap();
        assert_eq!(
            args(&run),
            [
                "dropship",
                "deploy",
                "--host=local",
                "--remote-path=/srv/app",
                "--env=export A=1\nB=\"two\nlines\"\n",
                "--github-token=ghs_abc",
                "--environment-url=https://example.com",
            ]
        );
    }

    #[test]
    fn secrets_include_key_passphrase_token_and_env_values() {
        let inputs = Inputs::read(&vars(&[
            ("INPUT_KEY", "KEYTEXT"),
            ("INPUT_KEY-PASSPHRASE", "pass"),
            ("INPUT_GITHUB-TOKEN", "tok"),
            ("INPUT_ENV", "A=alpha\nB='beta'\n"),
            ("INPUT_HOST", "example.com"),
        ]))
        .unwrap();
        assert_eq!(
            inputs.secrets(),
            ["KEYTEXT", "pass", "tok", "alpha", "beta"]
        );
        let broken = Inputs::read(&vars(&[("INPUT_ENV", "A=\"open\nB=2\n")])).unwrap();
        assert_eq!(broken.secrets(), ["A=\"open\nB=2\n"]);
    }

    #[test]
    fn unknown_inputs_warn_with_the_closest_name() {
        let inputs = Inputs::read(&vars(&[
            ("INPUT_REMOTE-PTH", "/srv/app"),
            ("INPUT_HOST", "local"),
        ]))
        .unwrap();
        let warnings = inputs.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0]
                .starts_with("unknown input `remote-pth` is ignored; did you mean `remote-path`?"),
            "{}",
            warnings[0]
        );
        let far = Inputs::read(&vars(&[("INPUT_ZZZZZZZZZZZZ", "1")])).unwrap();
        assert!(
            far.warnings()[0].starts_with(
                "unknown input `zzzzzzzzzzzz` is ignored; known inputs: command, host,"
            ),
            "{:?}",
            far.warnings()
        );
        // A missing required input names the input, not the flag.
        let err = inputs.plan().unwrap_err();
        assert_eq!(
            err.to_string(),
            "input `remote-path`: is required by `deploy`"
        );
    }

    #[test]
    fn a_bad_boolean_is_an_input_error() {
        let err = plan(&[
            ("INPUT_HOST", "local"),
            ("INPUT_REMOTE-PATH", "/srv/app"),
            ("INPUT_DRY-RUN", "yes"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "input `dry-run`: must be `true` or `false`"
        );
        assert_eq!(err.exit_status(), crate::error::ExitStatus::BadInput);
        assert!(
            plan(&[
                ("INPUT_HOST", "local"),
                ("INPUT_REMOTE-PATH", "/srv/app"),
                ("INPUT_DRY-RUN", "FALSE"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn an_unknown_command_is_an_input_error() {
        let err = plan(&[("INPUT_COMMAND", "destroy")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("input `command`: `destroy` is not a command"),
            "{err}"
        );
        assert_eq!(err.exit_status(), crate::error::ExitStatus::BadInput);
    }

    /// Every flag of every sub-command is reachable from an input (or is CLI-only),
    /// and each input's kind matches what clap expects of its flag.
    #[test]
    fn the_table_matches_the_command_line() {
        const CLI_ONLY: &[&str] = &[
            "help",
            "version",
            "json",
            "key-file",
            "known-hosts-file",
            "env-file",
        ];
        let root = crate::cli::Cli::command();
        for command in COMMANDS {
            let sub = root.find_subcommand(command).unwrap();
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if CLI_ONLY.contains(&long) {
                    continue;
                }
                let entry = INPUTS.iter().find(|(_, flag, _)| *flag == long);
                let Some(&(name, _, kind)) = entry else {
                    panic!("`{command} --{long}` has no Action input: add a line to INPUTS");
                };
                let expected = match arg.get_action() {
                    ArgAction::SetTrue => Kind::Switch,
                    ArgAction::Append => Kind::List,
                    _ => kind,
                };
                assert_eq!(kind, expected, "input `{name}` (`--{long}`)");
                if matches!(kind, Kind::Value | Kind::Text) {
                    assert!(
                        matches!(arg.get_action(), ArgAction::Set),
                        "input `{name}` (`--{long}`) expects a value flag"
                    );
                }
            }
        }
        for (name, flag, kind) in INPUTS {
            assert_eq!(*kind == Kind::Kept, flag.is_empty(), "input `{name}`");
        }
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("remote-pth", "remote-path"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
