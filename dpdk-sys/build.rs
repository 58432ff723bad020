//! Finds libdpdk with pkg-config, generates bindings with bindgen and compiles the C shim.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let lib = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!(
                "error: DPDK >= 22.11 not found by pkg-config ({e}).\n\
                 Install it with `apt-get install libdpdk-dev pkg-config clang libclang-dev`, \
                 or build without DPDK: `cargo build --no-default-features -p router`."
            );
            std::process::exit(1);
        }
    };

    // `pkg-config --cflags libdpdk` carries `-include rte_config.h -march=corei7` and defines:
    // hand every token to both clang (bindgen) and the C compiler.
    let cflags = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("pkg-config ran a moment ago");
    let cflags: Vec<String> = String::from_utf8_lossy(&cflags.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    let mut build = cc::Build::new();
    build
        .file("shim/shim.c")
        .opt_level(3)
        .define("ALLOW_EXPERIMENTAL_API", None);
    for f in &cflags {
        build.flag(f);
    }
    build.compile("dpdk_shim");

    let bindings = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(cflags.iter())
        .clang_arg("-DALLOW_EXPERIMENTAL_API")
        .allowlist_function("rte_eal_.*|rte_eth_.*|rte_pktmbuf_.*|rte_mempool_.*|rte_thread_.*|rte_lcore_.*|rte_socket_id|rte_strerror|rte_version|rte_exit|rte_pdump_init|rte_pdump_uninit|shim_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*")
        .blocklist_function("rte_eth_rx_burst|rte_eth_tx_burst")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_arp_ipv4")
        .derive_default(true)
        .layout_tests(false)
        .clang_macro_fallback()
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            eprintln!("error: bindgen over DPDK headers failed ({e}); is libclang-dev installed?");
            std::process::exit(1);
        });
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings");

    // Keep every PMD reachable: EAL loads drivers from its plugin directory when linked
    // dynamically, which pkg-config's default (shared) libs give us.
    for l in &lib.libs {
        let _ = l;
    }
}
