//! Test fixtures of the token request: keys and a certificate, a fixed `now`, an HTTP client.
//! Tests only; nothing here is built into the daemon.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::TlsSettings;

use super::http::{Roots, http_client};

pub(super) const RSA_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCsTTvDE+FiYtQS\n\
bVQA3ZtAK1YNDzE4Cp03DKgHGP6NdW4GStRFuym/TAP2Dhk7bY4qiSRgawpbQKcJ\n\
b2IIyV7Kk4MicjcJGxmxoQ/Bz+65y+qJfzOPYA7/t5hOiFvUtPVYq5LnenCyOvCg\n\
GJN4gTCJyL0rRMtGz7Ae5MgPMHvBWZYor1fWMTZ2z8/a+piDbOkbYOBQ7uzky9k1\n\
ziN4oBZKu7RZY8O3XcTrAMvH79sRb4p80FBcxEPgDUDdlGa50TCA4Jj1y32jZjsG\n\
/jH+bnVnsNVHnKGcrf+e/Gz1I8/kI4MHPCrz00c9+exlttBpAXXvPPxqP+PNX8X5\n\
/PBa6zXvAgMBAAECggEABF5C5Ru0a5eg08TEy+7SWEqg+FzJvSd7u+EMw31NOs3e\n\
17b+8bOgh9KICS1rU1fgMlDexLkB/rVBZtpVjG56gj1CJlXp8kenG5s/OIUqgrha\n\
Plkkt/5R8wa3DEqltVtPGwvigg7XG5Wl8xEccAIqdlvJ+/ZXBvkN+IKJVeU/RfQS\n\
UZCZFdy/y9U2eOlvo+JZurl1+EWbDvg74BAJShv2BFWRxj17xrPV3b5TPXAne71i\n\
ymro5ZIuZWVHrfnAoOHQG2G8kxKQPLcUqYA1R5OYguRUgiCHIRTV4H/Bv82tpFni\n\
zS44br3iym35b8qCpHKNEhrg498YGP7RlIuINM5QPQKBgQDeE3brepzzpxQhauFA\n\
UKlASsvcH95EhweMzNKF5S/1qwar7RHsnf7ouf4ka0Mc9NBwUF4dMY85pUKy+SSA\n\
PAbQRvbxq9sxoVE3qFiPNvqTOcXNCYaqLYKbm44UDbJr3Q7+NTRs01DkFWcayb3J\n\
9xmHfsGpA8noZSFuDyfv88n+cwKBgQDGn0ls+uvAriSPriEeD8pEa/CpopvQ4Iie\n\
Bop34au8bYqlEoecXer7sCwGsgzSd2SzvgTBndQ1DSg4zVX/0QBhvKvzvaE1Fa2R\n\
pdnTMVK+R/tNgcwftW8w9lBXRue7E7XQihKWdTP08cIQbprk3M5aCd+1Ry9/DYEz\n\
k3Pk2REvlQKBgA6ciT6FGr6NR63LMnbg18H7Kd6Z2i34FG8XKuLUaYtobU/ykTNY\n\
UeVOF4Kd7BSDpxM8tnSFRj8suG6+JcCqMmiRwr2z6QAi9Q0Mboc9vs7hBjqvXcTk\n\
qatDWN3I6Oxf5xSiu4hNfw0Cu33vuCUJtQxNMsDEFwzLWp+7L42CJNAxAoGBAJsF\n\
0dpEUeMWSCT4ZJLBAj66/KB58SFrTlYAhuygb1jnKnJCbyPFTdVZoFMtfsJ6O1fq\n\
tG2l0O4DMeR7p2a96o1eI9teo0b6f3kROF0Uvx8SsXrCFt6czocpiHVGOzGRZbO5\n\
QF68ZWwFkVEf8rcz+77cvAUR5WlF0hS+PpNcNIStAoGAA/qa6KLEBbKg1WTaWzhQ\n\
8QbbNSXper05wPgg2DQJgXQKWx5VmUDiarqga0GU37msJhXxNrM1aroI+lGhbfeq\n\
o2gSdBYYMMa4t3urrLGuAtO281qZceyT+DAUQeQIG4zLez3WZZ+Jhn9qvO3IhtH3\n\
S7ci7Xm71h7ZLN8TBGFMH14=\n\
-----END PRIVATE KEY-----\n\
";
pub(super) const RSA_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEowIBAAKCAQEArE07wxPhYmLUEm1UAN2bQCtWDQ8xOAqdNwyoBxj+jXVuBkrU\n\
Rbspv0wD9g4ZO22OKokkYGsKW0CnCW9iCMleypODInI3CRsZsaEPwc/uucvqiX8z\n\
j2AO/7eYTohb1LT1WKuS53pwsjrwoBiTeIEwici9K0TLRs+wHuTIDzB7wVmWKK9X\n\
1jE2ds/P2vqYg2zpG2DgUO7s5MvZNc4jeKAWSru0WWPDt13E6wDLx+/bEW+KfNBQ\n\
XMRD4A1A3ZRmudEwgOCY9ct9o2Y7Bv4x/m51Z7DVR5yhnK3/nvxs9SPP5CODBzwq\n\
89NHPfnsZbbQaQF17zz8aj/jzV/F+fzwWus17wIDAQABAoIBAAReQuUbtGuXoNPE\n\
xMvu0lhKoPhcyb0ne7vhDMN9TTrN3te2/vGzoIfSiAkta1NX4DJQ3sS5Af61QWba\n\
VYxueoI9QiZV6fJHpxubPziFKoK4Wj5ZJLf+UfMGtwxKpbVbTxsL4oIO1xuVpfMR\n\
HHACKnZbyfv2Vwb5DfiCiVXlP0X0ElGQmRXcv8vVNnjpb6PiWbq5dfhFmw74O+AQ\n\
CUob9gRVkcY9e8az1d2+Uz1wJ3u9Yspq6OWSLmVlR635wKDh0BthvJMSkDy3FKmA\n\
NUeTmILkVIIghyEU1eB/wb/NraRZ4s0uOG694spt+W/KgqRyjRIa4OPfGBj+0ZSL\n\
iDTOUD0CgYEA3hN263qc86cUIWrhQFCpQErL3B/eRIcHjMzSheUv9asGq+0R7J3+\n\
6Ln+JGtDHPTQcFBeHTGPOaVCsvkkgDwG0Eb28avbMaFRN6hYjzb6kznFzQmGqi2C\n\
m5uOFA2ya90O/jU0bNNQ5BVnGsm9yfcZh37BqQPJ6GUhbg8n7/PJ/nMCgYEAxp9J\n\
bPrrwK4kj64hHg/KRGvwqaKb0OCIngaKd+GrvG2KpRKHnF3q+7AsBrIM0ndks74E\n\
wZ3UNQ0oOM1V/9EAYbyr872hNRWtkaXZ0zFSvkf7TYHMH7VvMPZQV0bnuxO10IoS\n\
lnUz9PHCEG6a5NzOWgnftUcvfw2BM5Nz5NkRL5UCgYAOnIk+hRq+jUetyzJ24NfB\n\
+ynemdot+BRvFyri1GmLaG1P8pEzWFHlTheCnewUg6cTPLZ0hUY/LLhuviXAqjJo\n\
kcK9s+kAIvUNDG6HPb7O4QY6r13E5KmrQ1jdyOjsX+cUoruITX8NArt977glCbUM\n\
TTLAxBcMy1qfuy+NgiTQMQKBgQCbBdHaRFHjFkgk+GSSwQI+uvygefEha05WAIbs\n\
oG9Y5ypyQm8jxU3VWaBTLX7CejtX6rRtpdDuAzHke6dmveqNXiPbXqNG+n95EThd\n\
FL8fErF6whbenM6HKYh1RjsxkWWzuUBevGVsBZFRH/K3M/u+3LwFEeVpRdIUvj6T\n\
XDSErQKBgAP6muiixAWyoNVk2ls4UPEG2zUl6Xq9OcD4INg0CYF0ClseVZlA4mq6\n\
oGtBlN+5rCYV8TazNWq6CPpRoW33qqNoEnQWGDDGuLd7q6yxrgLTtvNamXHsk/gw\n\
FEHkCBuMy3s91mWfiYZ/arztyIbR90u3Iu15u9Ye2SzfEwRhTB9e\n\
-----END RSA PRIVATE KEY-----\n\
";
pub(super) const EC_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEII6TjBhQFsB1wcgPbTAZjh8cFYPt0N19YCjuZvb4PV+RoAoGCCqGSM49\n\
AwEHoUQDQgAE+3cGPEBmqXpEh9pSgtori9D2rwUx7xBXJKxwkC+XOJsui3KYIJye\n\
ivM61j4lBQ7Lpiwk67xjYSOpKGzHzT6SIA==\n\
-----END EC PRIVATE KEY-----\n\
";
pub(super) const EC_P384_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDD7bYRs87yipFNiaThK\n\
koZcVsAMh9qBq7M/qPlNYqnOK7LTkpTa/PVMbyQSCuxUWUmhZANiAAQ9/TNZA2Af\n\
muPA2lmLa1rUeoaOsq8sGiMwYmZ72+aYJbx/j+4GaVvJs0hfzGMO7HiqvdgGHcFB\n\
ANfgOOG2UJgZCBQLjOjCTD5h1/9RfbOKDPsRTqX2PS2CSOfYiQlh6HQ=\n\
-----END PRIVATE KEY-----\n\
";
pub(super) const EC_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBgzCCASugAwIBAgIUEYphHEf1yGZPOtpScWqAnM9XtiIwCgYIKoZIzj0EAwIw\n\
FzEVMBMGA1UEAwwMYmVhcmVyZC10ZXN0MCAXDTI2MTEyOTAzMjEzN1oYDzIxMjYx\n\
MTA1MDMyMTM3WjAXMRUwEwYDVQQDDAxiZWFyZXJkLXRlc3QwWTATBgcqhkjOPQIB\n\
BggqhkjOPQMBBwNCAAT7dwY8QGapekSH2lKC2iuL0PavBTHvEFckrHCQL5c4my6L\n\
cpggnJ6K8zrWPiUFDsumLCTrvGNhI6kobMfNPpIgo1MwUTAdBgNVHQ4EFgQUFw8g\n\
229FWhutS/05TUZerkm/V2IwHwYDVR0jBBgwFoAUFw8g229FWhutS/05TUZerkm/\n\
V2IwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNGADBDAiA0q7soP/sA9f0U\n\
K/Jxz2mUTY60WCnisg5T1MYvPlEcCgIfTbnKQfhyekb2vhWl9hLr6UgI/FDe1UEd\n\
Gq7fTDwMLg==\n\
-----END CERTIFICATE-----\n\
";

pub(super) const DEFAULT: Duration = Duration::from_secs(300);

pub(super) fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub(super) fn http() -> reqwest::Client {
    http_client(
        Duration::from_secs(5),
        &TlsSettings::default(),
        Roots::System,
    )
    .expect("http client")
}
