//! PgBouncer in front of the test PostgreSQL, in transaction pooling mode: [`PgBouncer::start`]
//! runs a `pgbouncer` process of its own, on a free port with a configuration directory of its
//! own (under the system's temporary directory), and stops it when dropped. The binary comes
//! from the Debian package, installed by `scripts/pgbouncer.sh` (which `scripts/services.sh`
//! runs, and which is run here when the binary is missing).
//!
//! With [`Tls::Required`], PgBouncer accepts clients over TLS only, with a server certificate
//! for `localhost` signed by a CA of the test's making ([`TestCa`]): a TLS server the tests
//! control, whatever the shared PostgreSQL's own setting.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::env::{database_address, database_url, with_address};

/// Clients' TLS at PgBouncer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain connections only (PgBouncer answers `N` to a TLS request).
    Off,
    /// TLS connections only, with [`TestCa`]'s certificate for `localhost`.
    Required,
}

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    /// Where it listens.
    pub address: SocketAddr,
}

/// A CA and a server certificate for `localhost` signed by it (PEM files in `dir`).
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA's certificate: what `sslrootcert` names.
    pub ca: PathBuf,
    /// A CA that signed nothing here (for a failing verification).
    pub other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pgbouncer.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        assert!(
            output.status.success(),
            "{} failed: pgbouncer is needed by these tests",
            script.display()
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

fn openssl(args: &[&str], dir: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command runs");
    assert!(status.success(), "openssl {}", args.join(" "));
}

impl TestCa {
    /// Makes the certificates in `dir`.
    fn make(dir: &Path) -> Self {
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for name in ["ca", "other-ca"] {
            let mut args = vec!["req", "-x509"];
            args.extend(key);
            let (keyout, out, subject) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN=planner test {name}"),
            );
            args.extend([
                "-keyout", &keyout, "-out", &out, "-days", "2", "-subj", &subject,
            ]);
            openssl(&args, dir);
        }
        let mut args = vec!["req"];
        args.extend(key);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&args, dir);
        std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
            dir,
        );
        Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

impl PgBouncer {
    /// Starts PgBouncer in transaction mode with `server_pool` server connections per database
    /// (and user); returns once it accepts connections. With [`Tls::Required`], also the
    /// certificates it serves.
    pub async fn start(server_pool: u32, tls: Tls) -> (Self, Option<TestCa>) {
        let binary = binary();
        let dir = std::env::temp_dir().join(format!(
            "planner-pgbouncer-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&dir).expect("pgbouncer directory");
        // pgbouncer drops root for `postgres`, which must read the directory.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let upstream = database_address().await;
        let (user, password) = credentials(&database_url());
        std::fs::write(
            dir.join("users.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )
        .unwrap();
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().unwrap().port()
        };
        let ca = (tls == Tls::Required).then(|| TestCa::make(&dir));
        let tls_settings = match &ca {
            None => String::new(),
            Some(ca) => format!(
                "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
                ca.cert.display(),
                ca.key.display()
            ),
        };
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n\
                 * = host={host} port={upstream_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {server_pool}\n\
                 max_client_conn = 200\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 {tls_settings}",
                host = upstream.ip(),
                upstream_port = upstream.port(),
                users = dir.join("users.txt").display(),
            ),
        )
        .unwrap();
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let log = std::fs::File::create(dir.join("pgbouncer.log")).unwrap();
        let mut command = Command::new(binary);
        // Running as root (pgbouncer refuses to), it switches to `postgres`.
        let root = std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0);
        if root {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("pgbouncer starts");
        let bouncer = Self {
            child,
            dir,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(bouncer.address)
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pgbouncer did not listen on {} within 10 s:\n{}",
                bouncer.address,
                bouncer.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (bouncer, ca)
    }

    /// `database_url` (a test database's) pointed at this PgBouncer.
    pub fn url_for(&self, database_url: &str) -> String {
        with_address(database_url, self.address)
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The user and password of a `postgres://user:password@...` URL.
fn credentials(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = authority
        .rsplit_once('@')
        .map_or("", |(userinfo, _)| userinfo);
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let user = if user.is_empty() { "postgres" } else { user };
    (user.to_owned(), password.to_owned())
}
