//! Log lines in K3s's format (logrus text: `time="..." level=info msg="..."`),
//! on stderr, where K3s writes them and where the agent reads snapshot names.

pub fn info(message: &str) {
    line("info", message);
}

pub fn warn(message: &str) {
    line("warning", message);
}

pub fn error(message: &str) {
    line("error", message);
}

fn line(level: &str, message: &str) {
    let time = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    eprintln!("time=\"{time}\" level={level} msg={message:?}");
}
