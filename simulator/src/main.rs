//! `provider-sim [ADDR]`: serve the carrier simulator (default 127.0.0.1:0,
//! a free port), printing its address. The token comes from `SIM_TOKEN`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    let token = std::env::var("SIM_TOKEN").unwrap_or_else(|_| "sim-token".into());
    let handle = provider_sim::start(addr, &token).await?;
    println!("{}", handle.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
