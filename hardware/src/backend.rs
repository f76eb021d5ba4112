//! Where pins come from: the Linux GPIO character device (any kernel, including Debian's),
//! the simulated header, or rppal (Raspberry Pi OS, /dev/gpiomem). rppal is archived upstream,
//! so it is compiled in only with the `rppal` cargo feature; asked for without it, opening
//! says so. Pins are numbered BCM, as on every Pi pinout chart.
//!
//! Every backend hands out the same [`Output`] and [`Input`] types, which implement the
//! embedded-hal traits, so the drivers never know which one they run on. Opening a backend or a
//! pin fails with a [`GpioError`] that says what to do about it (a missing device, no
//! permission, a pin another program holds).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use embedded_hal::digital::{ErrorKind, ErrorType, InputPin, OutputPin, PinState};

use crate::simulated::{SimulatedGpio, SimulatedPin};

/// Which backend to use, as written in the node config or on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// No GPIO: no LEDs, no buttons.
    None,
    /// The simulated header.
    Simulated,
    /// The GPIO character device; `None` finds the chip with the Pi's header on it.
    Chip(Option<PathBuf>),
    /// rppal, through /dev/gpiomem (only with the `rppal` cargo feature).
    Rppal,
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" | "off" => Ok(BackendChoice::None),
            "simulated" => Ok(BackendChoice::Simulated),
            "gpiochip" | "cdev" => Ok(BackendChoice::Chip(None)),
            "rppal" => Ok(BackendChoice::Rppal),
            _ => match text.split_once(':') {
                Some(("gpiochip" | "cdev", path)) if !path.is_empty() => {
                    Ok(BackendChoice::Chip(Some(PathBuf::from(path))))
                }
                _ => Err(format!(
                    "unknown GPIO backend {text:?}: use none, simulated, gpiochip, \
                     gpiochip:/dev/gpiochipN or rppal"
                )),
            },
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendChoice::None => f.write_str("none"),
            BackendChoice::Simulated => f.write_str("simulated"),
            BackendChoice::Chip(None) => f.write_str("gpiochip"),
            BackendChoice::Chip(Some(path)) => write!(f, "gpiochip:{}", path.display()),
            BackendChoice::Rppal => f.write_str("rppal"),
        }
    }
}

/// Why GPIO could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpioError {
    /// The backend cannot be opened on this machine.
    Unavailable {
        /// The backend.
        backend: String,
        /// Why, and what to do.
        why: String,
    },
    /// A pin cannot be had.
    Pin {
        /// The pin (BCM).
        bcm: u8,
        /// Why, and what to do.
        why: String,
    },
}

impl fmt::Display for GpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpioError::Unavailable { backend, why } => {
                write!(f, "GPIO backend {backend} is unavailable: {why}")
            }
            GpioError::Pin { bcm, why } => write!(f, "GPIO pin BCM{bcm}: {why}"),
        }
    }
}

impl std::error::Error for GpioError {}

impl embedded_hal::digital::Error for GpioError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// An opened backend.
pub enum Backend {
    /// The simulated header (kept so an API can read and press it).
    Simulated(SimulatedGpio),
    /// A GPIO character device.
    Chip(PathBuf),
    /// rppal.
    #[cfg(feature = "rppal")]
    Rppal(rppal::gpio::Gpio),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What the kernel's GPIO chips say about themselves: the Pi's header is on the chip whose
/// label is `pinctrl-bcm2835` (Pi 1-3), `pinctrl-bcm2711` (Pi 4) or `pinctrl-rp1` (Pi 5).
fn is_header_chip(label: &str) -> bool {
    label.starts_with("pinctrl-bcm") || label == "pinctrl-rp1"
}

fn find_header_chip() -> Result<PathBuf, GpioError> {
    let unavailable = |why: String| GpioError::Unavailable {
        backend: "gpiochip".into(),
        why,
    };
    let no_chips = |detail: String| {
        unavailable(format!(
            "no /dev/gpiochip* devices{detail}; is this a Raspberry Pi? Use --gpio simulated to \
             try the LEDs without one"
        ))
    };
    let chips = gpiocdev::chip::chips().map_err(|e| no_chips(format!(" ({e})")))?;
    if chips.is_empty() {
        return Err(no_chips(String::new()));
    }
    let mut labels = Vec::new();
    for path in &chips {
        let label = gpiocdev::Chip::from_path(path)
            .and_then(|chip| chip.info())
            .map(|info| info.label)
            .unwrap_or_default();
        if is_header_chip(&label) {
            return Ok(path.clone());
        }
        labels.push(format!("{} ({label})", path.display()));
    }
    match chips.first() {
        Some(first) if chips.len() == 1 => Ok(first.clone()),
        _ => Err(unavailable(format!(
            "none of the GPIO chips looks like a Raspberry Pi header: {}; name one with \
             --gpio gpiochip:/dev/gpiochipN",
            labels.join(", ")
        ))),
    }
}

fn chip_error(path: &Path, bcm: u8, error: gpiocdev::Error) -> GpioError {
    let text = error.to_string();
    let why = if text.contains("busy") || text.contains("EBUSY") {
        format!("{text}: another program holds it (see `gpioinfo`)")
    } else if text.contains("ermission") || text.contains("EACCES") {
        format!("{text}: run as root or add the user to the gpio group")
    } else {
        text
    };
    GpioError::Pin {
        bcm,
        why: format!("{}: {why}", path.display()),
    }
}

#[cfg(feature = "rppal")]
fn rppal_error(bcm: u8, error: rppal::gpio::Error) -> GpioError {
    let why = match &error {
        rppal::gpio::Error::PinUsed(_) => {
            "already in use by another part of bramble or another program".to_owned()
        }
        rppal::gpio::Error::PinNotAvailable(_) => "this Pi has no such pin".to_owned(),
        other => other.to_string(),
    };
    GpioError::Pin { bcm, why }
}

/// A simulated pin can be had once, like a real one.
fn simulated_free(gpio: &SimulatedGpio, bcm: u8) -> Result<(), GpioError> {
    match gpio.level(bcm) {
        Some(_) => Err(GpioError::Pin {
            bcm,
            why: "already in use (two parts configured on one pin?)".into(),
        }),
        None => Ok(()),
    }
}

impl Backend {
    /// Opens the chosen backend; `Ok(None)` for [`BackendChoice::None`].
    pub fn open(choice: &BackendChoice) -> Result<Option<Backend>, GpioError> {
        match choice {
            BackendChoice::None => Ok(None),
            BackendChoice::Simulated => Ok(Some(Backend::Simulated(SimulatedGpio::default()))),
            BackendChoice::Chip(path) => {
                let path = match path {
                    Some(path) => path.clone(),
                    None => find_header_chip()?,
                };
                gpiocdev::Chip::from_path(&path)
                    .and_then(|chip| chip.info())
                    .map_err(|e| GpioError::Unavailable {
                        backend: format!("gpiochip:{}", path.display()),
                        why: e.to_string(),
                    })?;
                Ok(Some(Backend::Chip(path)))
            }
            #[cfg(not(feature = "rppal"))]
            BackendChoice::Rppal => Err(GpioError::Unavailable {
                backend: "rppal".into(),
                why: "this bramble was built without the `rppal` cargo feature (rppal is \
                      archived upstream); use --gpio gpiochip, which drives the same pins on \
                      every Pi kernel, or rebuild with `cargo build --features rppal`"
                    .into(),
            }),
            #[cfg(feature = "rppal")]
            BackendChoice::Rppal => rppal::gpio::Gpio::new()
                .map(|gpio| Some(Backend::Rppal(gpio)))
                .map_err(|e| GpioError::Unavailable {
                    backend: "rppal".into(),
                    why: format!(
                        "{e} (rppal needs /dev/gpiomem on Raspberry Pi OS; on other kernels use \
                         --gpio gpiochip)"
                    ),
                }),
        }
    }

    /// The backend's name, as it is chosen.
    pub fn name(&self) -> String {
        match self {
            Backend::Simulated(_) => "simulated".into(),
            Backend::Chip(path) => format!("gpiochip:{}", path.display()),
            #[cfg(feature = "rppal")]
            Backend::Rppal(_) => "rppal".into(),
        }
    }

    /// The simulated header, when that is what this is.
    pub fn simulated(&self) -> Option<&SimulatedGpio> {
        match self {
            Backend::Simulated(gpio) => Some(gpio),
            _ => None,
        }
    }

    /// An output pin, driven low.
    pub fn output(&self, bcm: u8) -> Result<Output, GpioError> {
        match self {
            Backend::Simulated(gpio) => {
                simulated_free(gpio, bcm)?;
                Ok(Output(OutputKind::Simulated(gpio.output(bcm))))
            }
            Backend::Chip(path) => gpiocdev::Request::builder()
                .on_chip(path)
                .with_consumer("bramble")
                .with_line(u32::from(bcm))
                .as_output(gpiocdev::line::Value::Inactive)
                .request()
                .map(|request| Output(OutputKind::Chip { request, bcm }))
                .map_err(|e| chip_error(path, bcm, e)),
            #[cfg(feature = "rppal")]
            Backend::Rppal(gpio) => gpio
                .get(bcm)
                .map(|pin| Output(OutputKind::Rppal(pin.into_output_low())))
                .map_err(|e| rppal_error(bcm, e)),
        }
    }

    /// An input pin with the pull-up on (a button to ground reads low when pressed).
    pub fn input_pull_up(&self, bcm: u8) -> Result<Input, GpioError> {
        match self {
            Backend::Simulated(gpio) => {
                simulated_free(gpio, bcm)?;
                Ok(Input(InputKind::Simulated(gpio.input(bcm))))
            }
            Backend::Chip(path) => gpiocdev::Request::builder()
                .on_chip(path)
                .with_consumer("bramble")
                .with_line(u32::from(bcm))
                .as_input()
                .with_bias(gpiocdev::line::Bias::PullUp)
                .request()
                .map(|request| Input(InputKind::Chip { request, bcm }))
                .map_err(|e| chip_error(path, bcm, e)),
            #[cfg(feature = "rppal")]
            Backend::Rppal(gpio) => gpio
                .get(bcm)
                .map(|pin| Input(InputKind::Rppal(pin.into_input_pullup())))
                .map_err(|e| rppal_error(bcm, e)),
        }
    }
}

/// An output pin from any backend.
#[derive(Debug)]
pub struct Output(OutputKind);

#[derive(Debug)]
enum OutputKind {
    Simulated(SimulatedPin),
    Chip {
        request: gpiocdev::Request,
        bcm: u8,
    },
    #[cfg(feature = "rppal")]
    Rppal(rppal::gpio::OutputPin),
}

/// An input pin from any backend.
#[derive(Debug)]
pub struct Input(InputKind);

#[derive(Debug)]
enum InputKind {
    Simulated(SimulatedPin),
    Chip {
        request: gpiocdev::Request,
        bcm: u8,
    },
    #[cfg(feature = "rppal")]
    Rppal(rppal::gpio::InputPin),
}

impl ErrorType for Output {
    type Error = GpioError;
}

impl OutputPin for Output {
    fn set_low(&mut self) -> Result<(), GpioError> {
        self.set_state(PinState::Low)
    }

    fn set_high(&mut self) -> Result<(), GpioError> {
        self.set_state(PinState::High)
    }

    fn set_state(&mut self, state: PinState) -> Result<(), GpioError> {
        match &mut self.0 {
            OutputKind::Simulated(pin) => {
                let Ok(()) = pin.set_state(state);
                Ok(())
            }
            OutputKind::Chip { request, bcm } => {
                let value = match state {
                    PinState::High => gpiocdev::line::Value::Active,
                    PinState::Low => gpiocdev::line::Value::Inactive,
                };
                request.set_lone_value(value).map_err(|e| GpioError::Pin {
                    bcm: *bcm,
                    why: e.to_string(),
                })
            }
            #[cfg(feature = "rppal")]
            OutputKind::Rppal(pin) => {
                match state {
                    PinState::High => pin.set_high(),
                    PinState::Low => pin.set_low(),
                }
                Ok(())
            }
        }
    }
}

impl ErrorType for Input {
    type Error = GpioError;
}

impl InputPin for Input {
    fn is_high(&mut self) -> Result<bool, GpioError> {
        match &mut self.0 {
            InputKind::Simulated(pin) => {
                let Ok(high) = pin.is_high();
                Ok(high)
            }
            InputKind::Chip { request, bcm } => request
                .lone_value()
                .map(|value| value == gpiocdev::line::Value::Active)
                .map_err(|e| GpioError::Pin {
                    bcm: *bcm,
                    why: e.to_string(),
                }),
            #[cfg(feature = "rppal")]
            InputKind::Rppal(pin) => Ok(pin.is_high()),
        }
    }

    fn is_low(&mut self) -> Result<bool, GpioError> {
        Ok(!self.is_high()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choices_parse_and_print_back() {
        for text in [
            "none",
            "simulated",
            "gpiochip",
            "gpiochip:/dev/gpiochip4",
            "rppal",
        ] {
            let choice: BackendChoice = text.parse().unwrap();
            assert_eq!(choice.to_string(), text);
        }
        assert_eq!("cdev".parse(), Ok(BackendChoice::Chip(None)));
        let error = "spi".parse::<BackendChoice>().unwrap_err();
        assert!(error.contains("use none, simulated"), "{error}");
    }

    #[test]
    fn the_pi_header_chip_is_known_by_its_label() {
        assert!(is_header_chip("pinctrl-bcm2711"));
        assert!(is_header_chip("pinctrl-bcm2835"));
        assert!(is_header_chip("pinctrl-rp1"));
        assert!(!is_header_chip("raspberrypi-exp-gpio"));
        assert!(!is_header_chip("gpio-sim.0-node0"));
    }

    #[test]
    fn simulated_pins_work_through_the_common_types() {
        let backend = Backend::open(&BackendChoice::Simulated).unwrap().unwrap();
        let mut led = backend.output(17).unwrap();
        let mut button = backend.input_pull_up(27).unwrap();
        led.set_high().unwrap();
        let gpio = backend.simulated().unwrap();
        assert_eq!(gpio.level(17), Some(true));
        assert!(button.is_high().unwrap());
        gpio.press(27, true);
        assert!(button.is_low().unwrap());
        let error = backend.output(27).unwrap_err();
        assert!(
            error.to_string().contains("BCM27: already in use"),
            "{error}"
        );
    }

    #[cfg(not(feature = "rppal"))]
    #[test]
    fn rppal_without_the_feature_says_how_to_get_it() {
        let error = Backend::open(&BackendChoice::Rppal)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("GPIO backend rppal is unavailable"),
            "{error}"
        );
        assert!(
            error.contains("without the `rppal` cargo feature"),
            "{error}"
        );
        assert!(error.contains("--gpio gpiochip"), "{error}");
    }

    #[test]
    fn a_machine_without_gpio_gets_a_clear_error() {
        if Path::new("/dev/gpiomem").exists()
            || !gpiocdev::chip::chips().unwrap_or_default().is_empty()
        {
            return; // a machine with GPIO: nothing to check here
        }
        let error = Backend::open(&BackendChoice::Chip(None)).unwrap_err();
        assert!(error.to_string().contains("--gpio simulated"), "{error}");
        let error = Backend::open(&BackendChoice::Chip(Some("/dev/gpiochip9".into()))).unwrap_err();
        assert!(error.to_string().contains("/dev/gpiochip9"), "{error}");
        let error = Backend::open(&BackendChoice::Rppal).unwrap_err();
        assert!(error.to_string().contains("--gpio gpiochip"), "{error}");
    }
}
