//! An embedded default PostgreSQL: `initdb` + `postgres` from the system's binaries
//! (`/usr/lib/postgresql/<newest>/bin`) into a private data directory, listening only on a
//! Unix socket in a private directory (`listen_addresses = ''`), stopped on drop.
//!
//! initdb refuses to run as root, so as root the cluster belongs to the `postgres` system
//! user (created by Debian's postgresql package) and its directories are handed to it.
//! A reaper shell process stops the server if the owning process dies without dropping
//! this value (a panicking test, a static in the test harness, SIGKILL of `filesync demo`).
//!
//! Every PostgreSQL program runs with a cleaned environment (PATH and a C locale only), so
//! no secret of the process that started it is readable through `/proc/<pid>/environ`
//! (which a database superuser can read with SQL). `filesync serve` runs it durable (fsync
//! on); the demo and the tests use the fast settings. Applications connect as a role that
//! owns their database but is not a superuser ([`Postgres::create_app_database`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::run;

pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    as_user: Option<String>,
    keep_dir: bool,
}

/// The only environment PostgreSQL's programs get.
fn clean_env(c: &mut Command) -> &mut Command {
    c.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").env("LC_ALL", "C").env("LANG", "C")
}

impl Postgres {
    /// Finds the newest installed PostgreSQL's `bin` directory.
    pub fn find_bin() -> anyhow::Result<PathBuf> {
        let mut best: Option<(u32, PathBuf)> = None;
        if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
            for e in rd.flatten() {
                let v: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
                let bin = e.path().join("bin");
                if bin.join("initdb").exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                    best = Some((v, bin));
                }
            }
        }
        best.map(|(_, b)| b).context("no PostgreSQL server found under /usr/lib/postgresql/*/bin (install it: apt-get install -y postgresql)")
    }

    /// Starts (creating it on first use) a cluster in `dir`; `dir` survives drop when
    /// `keep_dir` is true so the next start finds its data again. `durable`: fsync on (a
    /// power failure loses nothing committed); off only for the demo and tests.
    pub fn start(dir: &Path, keep_dir: bool, durable: bool) -> anyhow::Result<Postgres> {
        let bin = Self::find_bin()?;
        let as_user = if is_root() { Some("postgres".to_owned()) } else { None };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let pg = Postgres { dir: dir.to_owned(), bin, as_user, keep_dir };
        let data = pg.data_dir();
        let sock = pg.socket_dir();
        std::fs::create_dir_all(&sock)?;
        if let Some(u) = &pg.as_user {
            run(Command::new("chown").arg("-R").arg(format!("{u}:")).arg(dir))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if !data.join("PG_VERSION").exists() {
            let mut c = pg.pg_command("initdb");
            c.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
            if !durable {
                c.arg("--no-sync");
            }
            run(&mut c).context("initdb failed")?;
        }
        // A stale pid file from a killed run would make pg_ctl refuse to start.
        let _ = pg.pg_command("pg_ctl").arg("-D").arg(&data).args(["stop", "-m", "immediate"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let speed = if durable { "-c fsync=on -c synchronous_commit=on -c full_page_writes=on" } else { "-c fsync=off -c synchronous_commit=off -c full_page_writes=off" };
        let opts = format!("-c listen_addresses='' -c unix_socket_directories='{}' {speed} -c max_connections=200", sock.display());
        let mut c = pg.pg_command("pg_ctl");
        c.arg("-D").arg(&data).arg("-l").arg(dir.join("postgres.log")).arg("-o").arg(opts).args(["-w", "-t", "60", "start"]);
        run(&mut c).with_context(|| format!("PostgreSQL did not start; see {}", dir.join("postgres.log").display()))?;
        pg.spawn_reaper()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn pg_command(&self, prog: &str) -> Command {
        let exe = self.bin.join(prog);
        let mut c = match &self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        clean_env(&mut c);
        c
    }

    /// psql as the superuser, for set-up statements.
    fn psql(&self, database: &str, sql: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        clean_env(&mut c).arg("-h").arg(self.socket_dir()).args(["-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql]);
        c
    }

    /// Stops the server when this process goes away, however it goes away.
    fn spawn_reaper(&self) -> anyhow::Result<()> {
        let mut stop = self.pg_command("pg_ctl");
        stop.arg("-D").arg(self.data_dir()).args(["stop", "-m", "fast"]);
        let stop_line = format!("{:?} {}", stop.get_program(), stop.get_args().map(|a| format!("'{}'", a.to_string_lossy())).collect::<Vec<_>>().join(" "));
        // Only the server this process started: a new process may have started another on
        // the same data dir by the time this one is gone (a quick restart).
        let pid_file = self.data_dir().join("postmaster.pid");
        let postmaster = std::fs::read_to_string(&pid_file).unwrap_or_default().lines().next().unwrap_or("").trim().to_owned();
        anyhow::ensure!(postmaster.chars().all(|c| c.is_ascii_digit()) && !postmaster.is_empty(), "PostgreSQL started but {} names no process", pid_file.display());
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; if [ \"$(head -n 1 '{}' 2>/dev/null)\" = {postmaster} ]; then {} >/dev/null 2>&1; fi",
            std::process::id(),
            pid_file.display(),
            stop_line.replace('"', "")
        );
        clean_env(&mut Command::new("setsid")).arg("sh").arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        Ok(())
    }

    /// A superuser connection URL for `database` (sqlx understands `host=<socket dir>`).
    pub fn url(&self, database: &str) -> String {
        self.url_as(database, "postgres")
    }

    /// A connection URL for `database` as `role`.
    pub fn url_as(&self, database: &str, role: &str) -> String {
        format!("postgres:///{database}?host={}&user={role}", self.socket_dir().display())
    }

    /// Creates (or takes over) `database` for an application role that owns it and is not
    /// a superuser; returns the URL to connect as that role. A database made by an older
    /// version (owned by the superuser) is handed to the role, tables (and their sequences)
    /// included.
    pub fn create_app_database(&self, database: &str, role: &str) -> anyhow::Result<String> {
        anyhow::ensure!(role.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "bad role name {role:?}");
        self.create_database(database)?;
        run(&mut self.psql(
            "postgres",
            &format!("do $$ begin create role {role} login nosuperuser nocreatedb nocreaterole noreplication; exception when duplicate_object or unique_violation then null; end $$"),
        ))
        .context("cannot create the application role")?;
        run(&mut self.psql("postgres", &format!("alter database {database} owner to {role}")))?;
        let take_over = format!(
            "grant all on schema public to {role}; \
             do $$ declare r record; begin \
               for r in select format('alter table %I.%I owner to {role}', schemaname, tablename) as s from pg_tables where schemaname = 'public' and tableowner <> '{role}' loop execute r.s; end loop; \
             end $$"
        );
        run(&mut self.psql(database, &take_over))?;
        Ok(self.url_as(database, role))
    }

    /// Creates `database` unless it exists.
    pub fn create_database(&self, database: &str) -> anyhow::Result<()> {
        anyhow::ensure!(database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad database name {database:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.psql("postgres", &format!("select 1 from pg_database where datname = '{database}'")).output()?;
            if out.status.success() {
                if String::from_utf8_lossy(&out.stdout).trim() == "1" {
                    return Ok(());
                }
                run(clean_env(&mut Command::new(self.bin.join("createdb"))).arg("-h").arg(self.socket_dir()).args(["-U", "postgres", database]))?;
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "PostgreSQL is not answering: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_command("pg_ctl").arg("-D").arg(self.data_dir()).args(["stop", "-m", "fast"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}
