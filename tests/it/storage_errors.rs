//! Storage errors: on a real S3-compatible server a missing bucket or object and access
//! denied (IAM policies enforced), for a source and for a sink; on local disk a full disk
//! under the sink. Each a clear message naming the location, exit status 1, and the previous
//! output left as it was.

use object_store::path::Path as ObjectPath;

use crate::support::s3::S3Server;
use crate::support::*;

/// The shop pipeline reading from `lake/raw/` and writing to `lake/out/` on `server`.
async fn shop_on_s3(server: &S3Server) -> (tempfile::TempDir, Vec<(String, String)>) {
    (server.shop_pipeline().await, server.env())
}

#[tokio::test]
async fn missing_buckets_and_objects_name_the_location() {
    let server = S3Server::start();
    let (dir, env) = shop_on_s3(&server).await;
    sluice_env(dir.path(), &["run", "."], &env).expect(0);
    let store = server.store("lake");
    let listed = |prefix: &str| {
        let store = store.clone();
        let prefix = prefix.to_string();
        async move {
            use futures::TryStreamExt;
            let mut keys: Vec<String> = store
                .list(Some(&ObjectPath::from(prefix)))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap();
            keys.sort();
            keys
        }
    };
    let before = listed("out").await;
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();

    // A source in a bucket that does not exist.
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace(
            "s3://lake/raw/customers.jsonl",
            "s3://nobucket/raw/customers.jsonl",
        ),
    )
    .unwrap();
    let run = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("s3://nobucket/raw/customers.jsonl"),
        "{}",
        run.stderr
    );

    // A source object that is gone.
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace("s3://lake/raw/customers.jsonl", "s3://lake/raw/gone.jsonl"),
    )
    .unwrap();
    let run = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("s3://lake/raw/gone.jsonl"),
        "{}",
        run.stderr
    );

    assert_eq!(
        listed("out").await,
        before,
        "a failed source changed an output"
    );

    // A sink in a bucket that does not exist.
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace(
            "s3://lake/out/daily_revenue/",
            "s3://nobucket/out/daily_revenue/",
        ),
    )
    .unwrap();
    let run = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("s3://nobucket/out/daily_revenue"),
        "{}",
        run.stderr
    );
    // The outputs are as the first run left them: the source errors stop the run before any
    // model runs; the sink error fails daily_revenue, whose old output stays where it was
    // (revenue_by_country, which does not depend on it, is rewritten).
    let after = listed("out/daily_revenue").await;
    let old: Vec<&String> = before
        .iter()
        .filter(|k| k.starts_with("out/daily_revenue/"))
        .collect();
    assert!(!old.is_empty());
    assert_eq!(after.iter().collect::<Vec<_>>(), old);
}

#[test]
fn access_denied_names_the_location() {
    let server = S3Server::start_with_iam();
    // A user who may list and read `lake` and nothing else; then credentials are checked.
    let data = testdata("shop").join("data");
    let keys = server.python(
        r#"
import os
root = sys.argv[1]
for b in ["lake", "secret"]:
    s3.create_bucket(Bucket=b)
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        with open(p, "rb") as fh:
            s3.put_object(Bucket="lake", Key="raw/" + os.path.relpath(p, root), Body=fh.read())
with open(os.path.join(root, "customers.jsonl"), "rb") as fh:
    s3.put_object(Bucket="secret", Key="customers.jsonl", Body=fh.read())
iam.create_user(UserName="reader")
key = iam.create_access_key(UserName="reader")["AccessKey"]
iam.put_user_policy(UserName="reader", PolicyName="read-lake", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                   "Resource": ["arn:aws:s3:::lake", "arn:aws:s3:::lake/*"]}]}))
lock()
print(key["AccessKeyId"], key["SecretAccessKey"])
"#,
        &[data.to_str().unwrap()],
    );
    let (id, secret) = keys.trim().split_once(' ').unwrap();
    let mut env = server.env();
    env.retain(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_ACCESS_KEY_ID".into(), id.to_string()));
    env.push(("AWS_SECRET_ACCESS_KEY".into(), secret.to_string()));
    let dir = shop_pipeline_on_s3();

    // Writing the outputs is denied.
    let run = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(run.stderr.contains("s3://lake/out/"), "{}", run.stderr);
    assert!(
        run.stderr.contains("access denied (check the credentials"),
        "{}",
        run.stderr
    );

    // Reading a source in a bucket the user may not read is denied, before anything runs.
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace(
            "s3://lake/raw/customers.jsonl",
            "s3://secret/customers.jsonl",
        ),
    )
    .unwrap();
    let run = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("s3://secret/customers.jsonl"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("access denied (check the credentials"),
        "{}",
        run.stderr
    );
}

/// A 1 MiB tmpfs mounted at a path for the life of the value.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts it, or `None` when not root (mounting needs root; CI runs as root).
    fn mount(at: &std::path::Path) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        if !out.status.success() {
            let root = std::process::Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
            assert!(
                !root,
                "mounting a tmpfs as root failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_the_sink_names_the_file_and_keeps_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(_disk) = SmallDisk::mount(&d.join("disk")) else {
        eprintln!("not root: the full-disk test needs to mount a tmpfs");
        return;
    };
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(d.join("queries/m.sql"), "SELECT * FROM src").unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "[sources.src]\nlocation = \"data/\"\nformat = \"csv\"\n\
         [models.m.sink]\nlocation = \"disk/out/\"\nformat = \"csv\"\n",
    )
    .unwrap();
    // Rows of 100 characters that do not repeat: 100 rows fit, 30,000 (3 MB) do not.
    let rows = |n: u64| {
        let mut text = String::from("id,text\n");
        for i in 0..n {
            let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            text.push_str(&format!("{i},{}\n", format!("{x:032x}").repeat(3)));
        }
        text
    };
    std::fs::write(d.join("data/a.csv"), rows(100)).unwrap();
    sluice(d, &["run", "."]).expect(0);
    let published = |snap: std::collections::BTreeMap<String, Vec<u8>>| {
        snap.into_iter()
            .filter(|(k, _)| !k.starts_with("_staging"))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let before = published(snapshot(&d.join("disk/out")));
    assert!(before.contains_key("_MANIFEST"));

    std::fs::write(d.join("data/a.csv"), rows(30_000)).unwrap();
    let run = sluice(d, &["run", "."]).expect(1);
    assert!(run.stderr.contains("disk/out/"), "{}", run.stderr);
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    assert_eq!(published(snapshot(&d.join("disk/out"))), before);
}
