//! A throwaway PostgreSQL cluster of a test's own: initdb into a temporary
//! directory, on a free loopback port, optionally with TLS from a CA made
//! for the test. Tests that stop or restart PostgreSQL use this, never the
//! machine's shared server (other tests are using it).
//!
//! We run as root and PostgreSQL refuses to, so initdb and pg_ctl run as
//! the `postgres` user through `runuser`, on a data directory it owns.
//! Every wait is bounded (`pg_ctl -w -t`); Drop stops the server and
//! removes the directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// Seconds pg_ctl waits for the server to start or stop.
const PG_CTL_WAIT: &str = "60";

/// The superuser's password: characters a hand-made URL would break on.
pub const PASSWORD: &str = "p@ss:/w{rd}?#%\" 'x";

#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    /// `ssl = on` with a certificate for 127.0.0.1 and localhost.
    pub ssl: bool,
    /// Only `hostssl` lines in pg_hba.conf: plain TCP is refused.
    pub ssl_only: bool,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// The CA that signed the server's certificate (PEM), when `ssl`.
    pub ca_pem: String,
    pub ca_file: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca_pem: String,
    data: PathBuf,
    log: PathBuf,
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--"])
        .arg(Path::new(BIN).join(program));
    command
}

fn openssl(dir: &Path, args: &[&str], what: &str) {
    run(
        Command::new("/usr/bin/openssl").current_dir(dir).args(args),
        what,
    );
}

/// A CA certificate and key (`{name}.crt`, `{name}.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) -> String {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=tem test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
        "make a test CA",
    );
    std::fs::read_to_string(dir.join(format!("{name}.crt"))).unwrap()
}

fn make_server_certificate(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        "make the server key",
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
        "sign the server certificate",
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Cluster {
    /// initdb, configure and start; panics with the server log if it fails.
    pub fn start(settings: ClusterSettings) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tem-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let log = dir.join("server.log");
        let (ca_pem, other_ca_pem) = if settings.ssl {
            let ca = make_ca(&dir, "ca");
            let other = make_ca(&dir, "other-ca");
            make_server_certificate(&dir);
            (ca, other)
        } else {
            (String::new(), String::new())
        };
        std::fs::write(dir.join("pwfile"), format!("{PASSWORD}\n")).unwrap();
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir),
            "give the cluster directory to postgres",
        );
        run(
            Command::new("chmod").arg("700").arg(&dir),
            "keep the cluster directory private",
        );
        if settings.ssl {
            run(
                Command::new("chmod").arg("600").arg(dir.join("server.key")),
                "protect the server key",
            );
        }
        run(
            as_postgres("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ])
                .arg(format!("--pwfile={}", dir.join("pwfile").display())),
            "initdb",
        );
        let port = free_port();
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 30\n",
            dir.display()
        );
        if settings.ssl {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                dir.display()
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        let host_line = if settings.ssl_only { "hostssl" } else { "host" };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{host_line} all all 127.0.0.1/32 scram-sha-256\n"),
        )
        .unwrap();
        run(
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("pg_hba.conf")),
            "give pg_hba.conf to postgres",
        );
        let cluster = Cluster {
            ca_file: dir.join("ca.crt"),
            dir,
            port,
            ca_pem,
            other_ca_pem,
            data,
            log,
        };
        cluster.pg_ctl("start");
        cluster
    }

    fn pg_ctl(&self, action: &str) {
        let mut command = as_postgres("pg_ctl");
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", PG_CTL_WAIT]);
        if action != "start" {
            // Fast: sessions are terminated at once, as on a failover.
            command.args(["-m", "fast"]);
        }
        let output = command.arg(action).output().expect("run pg_ctl");
        assert!(
            output.status.success(),
            "pg_ctl {action} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Stops (terminating every session) and starts again on the same port.
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    /// A URL of the superuser on `database` (password percent-encoded).
    pub fn url(&self, database: &str, query: &str) -> String {
        let encoded: String = PASSWORD
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        format!(
            "postgres://postgres:{encoded}@127.0.0.1:{}/{database}{query}",
            self.port
        )
    }

    /// The RDS JSON form of a secret for this cluster's superuser.
    pub fn json_secret(&self, host: &str, database: &str) -> String {
        serde_json::json!({
            "engine": "postgres",
            "username": "postgres",
            "password": PASSWORD,
            "host": host,
            "port": self.port,
            "dbname": database,
            "dbInstanceIdentifier": "tem-test",
        })
        .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", PG_CTL_WAIT, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
