//! TLS to Postgres, against the TLS-only cluster of infra/up.sh (a test CA signed its
//! certificate for localhost and 127.0.0.1; plain connections are refused by
//! `pg_hba.conf`): each `sslmode` connects or is refused as libpq's would be, the
//! refusal names the setting, and a client certificate logs in where the server asks
//! for one. The pgbench SIGKILL test in `postgres.rs` runs over `verify-full` too.

use std::path::{Path, PathBuf};

use crate::pg::{Db, pipeline_at};
use crate::support::*;

fn certs() -> PathBuf {
    PathBuf::from(stack_env("TRIBUTARY_PG_TLS_CERTS"))
}

/// Snapshot and stream of one small table over `dsn`; `Err(stderr)` when the run fails.
fn mirror_over(dsn: &str, db: &mut Db) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let slot = db.slot();
    let spec = "[[tables]]\nname = \"t\"\nfrom = \"public.t\"\nmode = \"mirror\"\n";
    let p = pipeline_at(dir.path(), dsn, &slot, &["t"], spec);
    let run = |dir: &Path| {
        let out = tributary(dir, &["run", p.to_str().unwrap(), "--once"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    run(dir.path())?;
    db.sql("UPDATE t SET v = v || '!' WHERE id = 2; INSERT INTO t VALUES (100, 'streamed');");
    run(dir.path())?;
    let rows = duck(&format!(
        "SELECT id || '=' || v FROM {} ORDER BY id",
        scan(dir.path().join("lake/t").to_str().unwrap())
    ));
    db.sql("UPDATE t SET v = rtrim(v, '!') WHERE id = 2; DELETE FROM t WHERE id = 100;");
    Ok(rows
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect())
}

#[test]
fn sslmodes_connect_or_refuse_as_libpq_does() {
    let mut db = Db::create_on("TRIBUTARY_PG_TLS_DSN", "tls");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3) g;");
    let certs = certs();
    let ca = certs.join("ca.crt");
    let base = format!("port=15433 user=postgres password=tributary dbname={}", db.name);
    let expected = vec!["1=v1", "2=v2!", "3=v3", "100=streamed"];

    // verify-full by name and by address (the certificate names both).
    for host in ["localhost", "127.0.0.1"] {
        let dsn = format!(
            "host={host} {base} sslmode=verify-full sslrootcert={}",
            ca.display()
        );
        assert_eq!(mirror_over(&dsn, &mut db).unwrap(), expected, "{dsn}");
    }
    // The URL form, and verify-ca, which does not check the name.
    let url = format!(
        "postgresql://postgres:tributary@localhost:15433/{}?sslmode=verify-full&sslrootcert={}",
        db.name,
        ca.display()
    );
    assert_eq!(mirror_over(&url, &mut db).unwrap(), expected);
    let other_name = format!(
        "host=db.invalid hostaddr=127.0.0.1 {base} sslrootcert={}",
        ca.display()
    );
    assert_eq!(
        mirror_over(&format!("{other_name} sslmode=verify-ca"), &mut db).unwrap(),
        expected
    );
    // Encryption without verification; `allow` and `prefer` find TLS on a server that
    // refuses plain connections.
    for mode in ["require", "prefer", "allow"] {
        let dsn = format!("host=127.0.0.1 {base} sslmode={mode}");
        assert_eq!(mirror_over(&dsn, &mut db).unwrap(), expected, "{dsn}");
    }

    // A name the certificate does not hold.
    let err = mirror_over(&format!("{other_name} sslmode=verify-full"), &mut db).unwrap_err();
    assert!(
        err.contains("sslmode=verify-full: certificate name does not match host \"db.invalid\""),
        "{err}"
    );
    // A CA that did not sign the server's certificate; `require` with a root
    // certificate verifies the chain, as libpq's does.
    for mode in ["verify-full", "verify-ca", "require"] {
        let dsn = format!(
            "host=localhost {base} sslmode={mode} sslrootcert={}",
            certs.join("other-ca.crt").display()
        );
        let err = mirror_over(&dsn, &mut db).unwrap_err();
        assert!(
            err.contains(&format!(
                "sslmode={mode}: the server's certificate is not signed by a CA in sslrootcert"
            )),
            "{err}"
        );
    }
    // No TLS: refused by this server; and `require` to the plain server is refused.
    let err = mirror_over(&format!("host=127.0.0.1 {base} sslmode=disable"), &mut db).unwrap_err();
    assert!(
        err.contains("no pg_hba.conf entry") && err.contains("no encryption"),
        "{err}"
    );
    let mut plain = Db::create("tlsplain");
    plain.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let err = mirror_over(&format!("{} sslmode=require", plain.dsn()), &mut plain).unwrap_err();
    assert!(
        err.contains("sslmode=require: the server at 127.0.0.1:15432 does not accept TLS connections"),
        "{err}"
    );
    // `prefer`, the default, still connects to it in plain text.
    plain.sql("INSERT INTO t VALUES (1, 'v1'), (2, 'v2'), (3, 'v3')");
    assert_eq!(mirror_over(&plain.dsn(), &mut plain).unwrap(), expected);
}

#[test]
fn client_certificates_log_in_where_the_server_asks_for_one() {
    let mut db = Db::create_on("TRIBUTARY_PG_TLS_DSN", "tlscert");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3) g;");
    let certs = certs();
    // tributary_cert logs in by certificate (`hostssl … cert`): no password.
    let dsn = format!(
        "host=localhost port=15433 user=tributary_cert dbname={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        db.name,
        certs.join("ca.crt").display(),
        certs.join("client.crt").display(),
        certs.join("client.key").display()
    );
    assert_eq!(
        mirror_over(&dsn, &mut db).unwrap(),
        vec!["1=v1", "2=v2!", "3=v3", "100=streamed"]
    );
    // Without the certificate the server refuses the session.
    let without = dsn.split(" sslcert=").next().unwrap().to_string();
    let err = mirror_over(&without, &mut db).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    // A key that is not a key is named.
    let bad = format!(
        "{without} sslcert={} sslkey={}",
        certs.join("client.crt").display(),
        certs.join("ca.crt").display()
    );
    let err = mirror_over(&bad, &mut db).unwrap_err();
    assert!(err.contains("sslkey") && err.contains("ca.crt"), "{err}");
}
