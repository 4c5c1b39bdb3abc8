//! `cnnc fmt`: rewrites files in place, `--check` lists what would change, text that does not lex
//! is refused, and the exit codes say which.

mod common;

use common::cnnc;

#[test]
fn fmt_rewrites_checks_and_refuses() {
    let dir = std::env::temp_dir().join(format!("cnnc-fmt-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let messy = dir.join("messy.cnn");
    let clean = dir.join("clean.cnn");
    let bad = dir.join("bad.cnn");
    std::fs::write(&messy, "// keep me\nmodel M {\ninput i:[4] // and me\n  output o=i|>dense(2)\n}").unwrap();
    std::fs::write(&clean, "model M {\n    input i: [4]\n    output o = i\n}\n").unwrap();
    std::fs::write(&bad, "model M {\n    x = 1 ; 2\n}\n").unwrap();

    let out = cnnc().arg("fmt").arg("--check").arg(&messy).arg(&clean).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would reformat") && stdout.contains("messy.cnn") && !stdout.contains("clean.cnn"),
        "{stdout}"
    );

    let out = cnnc().arg("fmt").arg(&messy).arg(&clean).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&messy).unwrap(),
        "// keep me\nmodel M {\n    input i: [4] // and me\n    output o = i |> dense(2)\n}\n"
    );
    let out = cnnc().arg("fmt").arg("--check").arg(&messy).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    let out = cnnc().arg("fmt").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.cnn:2:11: unexpected character `;`"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "model M {\n    x = 1 ; 2\n}\n");

    let out = cnnc().args(["fmt", "no/such/file.cnn"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cnnc().arg("fmt").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
