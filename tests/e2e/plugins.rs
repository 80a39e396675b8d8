//! `patchwork plugins`: real plugins are listed with their kind; broken libraries
//! are listed with a short, specific reason.

use patchwork_tests::{dylib_name, plugin_lib, run_patchwork, target_dir};

/// Runs `patchwork plugins --dir <target>` after checking the libraries exist.
fn list() -> String {
    for package in [
        "patchwork-vit",
        "patchwork-dino",
        "patchwork-fixture-not-a-plugin",
        "patchwork-fixture-abi-mismatch",
        "patchwork-fixture-needs-newer-host",
    ] {
        plugin_lib(package);
    }
    let out = run_patchwork([
        std::ffi::OsStr::new("plugins"),
        "--dir".as_ref(),
        target_dir().as_os_str(),
    ]);
    assert!(out.success(), "{}", out.describe());
    out.stdout
}

/// The lines of the entry for `package`'s library: its row and the indented lines
/// under it.
fn entry(listing: &str, package: &str) -> Vec<String> {
    let name = dylib_name(package);
    let mut lines = listing.lines().skip_while(|l| !l.contains(&name));
    let Some(first) = lines.next() else {
        panic!("no entry for '{name}' in:\n{listing}");
    };
    std::iter::once(first)
        .chain(lines.take_while(|l| l.starts_with(' ')))
        .map(str::to_string)
        .collect()
}

fn row(listing: &str, package: &str) -> Vec<String> {
    entry(listing, package)[0]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn real_plugins_are_listed_with_their_kind() {
    let listing = list();
    assert_eq!(
        row(&listing, "patchwork-vit")[..2],
        ["vit", "backbone"],
        "{listing}"
    );
    assert_eq!(
        row(&listing, "patchwork-dino")[..2],
        ["dino", "pretext-task"],
        "{listing}"
    );
}

#[test]
fn a_library_without_root_module_is_not_a_plugin() {
    let listing = list();
    let text = entry(&listing, "patchwork-fixture-not-a-plugin").join("\n");
    assert!(text.contains("is not a patchwork plugin"), "{listing}");
}

#[test]
fn an_incompatible_abi_is_refused_briefly() {
    let listing = list();
    let lines = entry(&listing, "patchwork-fixture-abi-mismatch");
    let text = lines.join("\n");
    assert!(text.contains("incompatible plugin ABI"), "{listing}");
    assert!(
        lines.len() < 30,
        "the ABI error should be short, got {} lines:\n{text}",
        lines.len()
    );
}

#[test]
fn a_plugin_for_a_newer_host_names_both_levels() {
    let listing = list();
    let text = entry(&listing, "patchwork-fixture-needs-newer-host").join("\n");
    let want = format!(
        "needs host op level 99, host provides {}",
        patchwork_plugin_api::abi::HOST_OP_LEVEL
    );
    assert!(text.contains(&want), "{listing}");
}
