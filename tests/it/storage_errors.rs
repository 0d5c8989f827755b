//! Storage errors: on a real S3-compatible server a missing bucket or object and access
//! denied (IAM policies enforced), for a source and for a sink; on local disk a full disk
//! under the sink. Each a clear message naming the location, exit status 1, and the previous
//! output left as it was.

use std::path::Path;

use crate::support::s3::S3Server;
use crate::support::*;

/// Runs the pipeline with `toml`'s location `from` replaced by `to`: it fails (exit 1) naming
/// `to` (without its trailing `/`).
#[track_caller]
fn fails_naming(dir: &Path, toml: &str, env: &[(String, String)], from: &str, to: &str) -> Run {
    std::fs::write(dir.join("sluice.toml"), toml.replace(from, to)).unwrap();
    let run = sluice_env(dir, &["run", "."], env).expect(1);
    let named = to.trim_end_matches('/');
    assert!(run.stderr.contains(named), "{named} not in: {}", run.stderr);
    run
}

#[tokio::test]
async fn missing_buckets_and_objects_name_the_location() {
    let server = S3Server::start();
    // The shop pipeline reading from `lake/raw/` and writing to `lake/out/`.
    let dir = server.shop_pipeline().await;
    let (d, env) = (dir.path(), server.env());
    sluice_env(d, &["run", "."], &env).expect(0);
    let out = Target::for_bucket_prefix(&server, "lake", "out");
    let before = out.keys().await;
    let toml = std::fs::read_to_string(d.join("sluice.toml")).unwrap();

    // A source in a bucket that does not exist; a source object that is gone.
    let customers = "s3://lake/raw/customers.jsonl";
    fails_naming(
        d,
        &toml,
        &env,
        customers,
        "s3://nobucket/raw/customers.jsonl",
    );
    fails_naming(d, &toml, &env, customers, "s3://lake/raw/gone.jsonl");
    assert_eq!(
        out.keys().await,
        before,
        "a failed source changed an output"
    );

    // A sink in a bucket that does not exist.
    fails_naming(
        d,
        &toml,
        &env,
        "s3://lake/out/daily_revenue/",
        "s3://nobucket/out/daily_revenue/",
    );
    // The outputs are as the first run left them: the source errors stop the run before any
    // model runs; the sink error fails daily_revenue, whose old output stays where it was
    // (revenue_by_country, which does not depend on it, is rewritten).
    let daily = |keys: Vec<String>| -> Vec<String> {
        keys.into_iter()
            .filter(|k| k.starts_with("daily_revenue/"))
            .collect()
    };
    let old = daily(before);
    assert!(!old.is_empty());
    assert_eq!(daily(out.keys().await), old);
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
    let run = fails_naming(
        dir.path(),
        &toml,
        &env,
        "s3://lake/raw/customers.jsonl",
        "s3://secret/customers.jsonl",
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
    let dir = OneModel::new("src", "m")
        .source_toml("format = \"csv\"")
        .sink_location("disk/out/")
        .sink_toml("format = \"csv\"")
        .build();
    let d = dir.path();
    let Some(_disk) = SmallDisk::mount(&d.join("disk")) else {
        eprintln!("not root: the full-disk test needs to mount a tmpfs");
        return;
    };
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
    let before = published(&snapshot(&d.join("disk/out")));
    assert!(before.contains_key("_MANIFEST"));

    std::fs::write(d.join("data/a.csv"), rows(30_000)).unwrap();
    let run = sluice(d, &["run", "."]).expect(1);
    // The file being staged, in the staging area beside the output.
    assert!(
        run.stderr.contains("disk/_sluice_staging/out/"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    assert_eq!(published(&snapshot(&d.join("disk/out"))), before);
}
