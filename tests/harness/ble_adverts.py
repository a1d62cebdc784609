"""Test adverts encoded from the specifications (cited in tests/vectors/ble/*.toml).

BTHome v2 (bthome.io/format, bthome.io/encryption): service data of 0xFCD2; device info
byte 0x40 (v2, plain) / 0x41 (v2, encrypted); an encrypted advert is 0x41, the AES-CCM
ciphertext of the objects, the 4-byte little-endian counter, the 4-byte MIC; the nonce is
MAC (6) + UUID 0xFCD2 little-endian (2) + device info (1) + counter (4).
iBeacon: Apple Proximity Beacon Specification R1. Eddystone: google/eddystone
protocol-specification.md (UID 0x00, TLM 0x20).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
APPLE = 0x004C


def bthome_plain(objects: bytes) -> dict[str, bytes]:
    return {BTHOME_UUID: bytes([0x40]) + objects}


def bthome_encrypted(key: bytes, mac: str, objects: bytes, counter: int) -> dict[str, bytes]:
    info = 0x41
    ctr = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(mac.replace(":", "")) + bytes([0xD2, 0xFC, info]) + ctr
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, None)
    return {BTHOME_UUID: bytes([info]) + sealed[:-4] + ctr + sealed[-4:]}


def ibeacon(uuid: str, major: int, minor: int, power: int = -59) -> dict[int, bytes]:
    body = bytes.fromhex(uuid.replace("-", "")) + major.to_bytes(2, "big")
    return {
        APPLE: bytes([0x02, 0x15]) + body + minor.to_bytes(2, "big") + (power & 0xFF).to_bytes()
    }


def eddystone_uid(namespace: str, instance: str, tx: int = -20) -> dict[str, bytes]:
    data = bytes([0x00, tx & 0xFF]) + bytes.fromhex(namespace) + bytes.fromhex(instance)
    return {EDDYSTONE_UUID: data + b"\x00\x00"}


def eddystone_tlm(
    battery_mv: int, temp_c: float = 21.5, count: int = 1, secs: int = 10
) -> dict[str, bytes]:
    temp = round(temp_c * 256) & 0xFFFF
    data = bytes([0x20, 0x00]) + battery_mv.to_bytes(2, "big") + temp.to_bytes(2, "big")
    return {EDDYSTONE_UUID: data + count.to_bytes(4, "big") + secs.to_bytes(4, "big")}
