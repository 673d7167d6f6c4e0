//! A site under test, whatever keeps it running: its remote path, its two app
//! ports and, for blue-green, a real nginx in front of them.

use std::fs;
use std::path::PathBuf;

use super::runtime::{Behaviour, Nginx, Pm2Home, free_port, get, node_app};
use crate::test::Test;

/// Prints the health and drain steps of a deploy's log (the figures the
/// load tests report).
pub fn print_switch_steps(stderr: &str) {
    stderr
        .lines()
        .filter(|l| l.contains("healthy") || l.contains("drained"))
        .for_each(|line| eprintln!("{line}"));
}

/// A remote path with ports and (for blue-green) nginx.
pub struct Site {
    pub work: tempfile::TempDir,
    pub remote: PathBuf,
    pub ports: (u16, u16),
    pub nginx: Option<Nginx>,
}

impl Site {
    /// A site with nginx in front when `blue_green`.
    pub fn new(blue_green: bool) -> Site {
        let work = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port());
        let upstream = work.path().join("upstream.conf");
        fs::write(
            &upstream,
            format!("upstream site {{ server 127.0.0.1:{}; }}\n", ports.0),
        )
        .unwrap();
        let nginx = blue_green.then(|| Nginx::start("site", &upstream));
        Site {
            remote: work.path().join("site"),
            work,
            ports,
            nginx,
        }
    }

    /// A Node app that answers with `variant`.
    pub fn app(&self, variant: &str, behaviour: Behaviour) -> PathBuf {
        node_app(self.work.path(), variant, behaviour)
    }

    /// Run options: blue-green through nginx when there is one, else restart on
    /// one port; `local` host, this remote path.
    pub fn run_args(&self, health_timeout: u64) -> Vec<String> {
        let mut args = vec![
            "--host".into(),
            "local".into(),
            "--remote-path".into(),
            self.remote.display().to_string(),
            "--health-timeout".into(),
            health_timeout.to_string(),
        ];
        match &self.nginx {
            Some(nginx) => args.extend([
                "--strategy".into(),
                "blue-green".into(),
                "--app-port".into(),
                format!("{},{}", self.ports.0, self.ports.1),
                "--nginx-upstream".into(),
                nginx.upstream.display().to_string(),
                "--nginx-reload".into(),
                nginx.reload_command(),
            ]),
            None => args.extend(["--app-port".into(), self.ports.0.to_string()]),
        }
        args
    }

    /// What the site answers: through nginx, or on the app port.
    pub fn answer(&self) -> String {
        let port = self.nginx.as_ref().map_or(self.ports.0, |n| n.port);
        get(port).unwrap_or_else(|err| format!("failed: {err}"))
    }

    /// Where `current` points.
    pub fn live(&self) -> String {
        fs::read_link(self.remote.join("current"))
            .unwrap()
            .display()
            .to_string()
    }
}

/// A site run by PM2, with its own `PM2_HOME`.
pub struct Pm2Site {
    pub site: Site,
    pub pm2: Pm2Home,
}

impl std::ops::Deref for Pm2Site {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.site
    }
}

impl Pm2Site {
    /// A PM2 site with nginx in front when `blue_green`.
    pub fn new(blue_green: bool) -> Pm2Site {
        Pm2Site {
            site: Site::new(blue_green),
            pm2: Pm2Home::new(),
        }
    }

    /// `deploy` of `app` as `release`, with a 20 s health timeout.
    pub fn deploy(&self, app: &std::path::Path, release: &str) -> Test {
        Test::new()
            .arg("deploy")
            .args(self.site.run_args(20))
            .args(["--release", release, "--working-directory"])
            .arg(app)
            .env("PM2_HOME", &self.pm2.path_str())
    }
}
