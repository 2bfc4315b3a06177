//! Running the built `temctl` against a fresh PostgreSQL database.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection};

pub const ROUTIT_HEADER: &str =
    "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie";

/// A temporary folder, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("temctl-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `temctl` with DATABASE_URL set to `url` (or unset) and the working
/// directory `cwd`.
pub fn temctl(url: Option<&str>, cwd: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_temctl"));
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("DATABASE_URL");
    if let Some(url) = url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run temctl")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A routit CSV with the given rows.
pub fn routit_csv(rows: &[&str]) -> Vec<u8> {
    let mut text = format!("{ROUTIT_HEADER}\n");
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    text.into_bytes()
}

/// A ZIP with one deflated entry.
pub fn zip_of(name: &str, bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    writer.start_file(name, options).unwrap();
    writer.write_all(bytes).unwrap();
    writer.finish().unwrap().into_inner()
}

/// An empty database (no migrations), and its URL.
pub async fn empty_database() -> (PgPool, String) {
    let server = PgConnectOptions::from_str(&tem_tests::db::server_url()).unwrap();
    let name = format!("tem_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = server
        .clone()
        .database("postgres")
        .connect()
        .await
        .expect("PostgreSQL is reachable at DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    let options = server.database(&name);
    let url = options.to_url_lossy().to_string();
    (PgPool::connect_with(options).await.unwrap(), url)
}

pub async fn cdr_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM call_detail_record")
        .fetch_one(pool)
        .await
        .unwrap()
}
