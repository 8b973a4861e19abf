pub fn write_view(
    _f: &std::path::Path,
    _o: &std::path::Path,
    _s: Option<&str>,
) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("x")
}
