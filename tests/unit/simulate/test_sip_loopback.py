"""The simulator's SIP stack against itself on 127.0.0.1: no PBX needed."""

import shutil
import subprocess

import pytest

from simulate.sip import SipStack, find_speech


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    raw, out = d / "raw.wav", d / "prompt.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en", "-w", str(raw), "Welcome to the bank. Please press one."],
        check=True,
    )
    subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(out)], check=True)
    return str(out)


@pytest.mark.sip
def test_call_hears_prompt_and_dtmf_arrives_by_info(speech_wav):
    assert shutil.which("espeak-ng") and shutil.which("sox")
    with SipStack() as stack:
        callee = stack.agent(
            "4008", "x", registrar=None, auto_answer_after=0.1, play_file=speech_wav
        )
        caller = stack.caller("13800138000", name="Wang")
        call = caller.call(f"sip:4008@127.0.0.1:{stack.local_port}")
        call.wait_connected(5)
        end = call.wait_prompt_end(silence=0.6, timeout=10)
        assert 1.5 < end < 5.0  # the espeak prompt lasts about 3 s
        call.send_dtmf("1#")
        stack.wait_for(lambda: len(callee.incoming[0].digits_received) == 2, 3, "digits")
        assert callee.incoming[0].digits_received == ["1", "#"]
        assert "13800138000" in callee.incoming[0].remote_uri
        call.end()
        call.wait_ended(3)
        speech = call.speech()
        assert speech.count >= 1


def test_find_speech_finds_two_prompts_and_the_dead_air_between(speech_wav):
    import wave

    with wave.open(speech_wav) as w:
        prompt = w.readframes(w.getnframes())
    silence = bytes(8000 * 2)  # one second
    assert find_speech(silence * 3).count == 0
    speech = find_speech(silence + prompt + silence * 2 + prompt)
    assert speech.count == 2
    first, second = speech.segments
    assert first[0] == pytest.approx(1.0, abs=0.25)
    assert speech.longest_gap() == pytest.approx(2.0, abs=0.5)
    assert speech.longest_gap(until=second[1] + 4.0) == pytest.approx(4.0, abs=0.05)


@pytest.mark.sip
def test_phones_keep_answering_while_a_test_runs_a_command():
    # pjsua2 acts only when pumped. A test waiting on `ivr-engine ...` once left its agent
    # phones deaf past Asterisk's 3 s qualify timeout, and the ACD logged them out under it.
    from tests.support.daemon import run_cli

    with SipStack() as stack:
        stack.agent("1001", "x", registrar=None, auto_answer_after=0.1)
        caller = stack.caller("13800138000")
        call = caller.call(f"sip:1001@127.0.0.1:{stack.local_port}")
        assert not call.is_connected
        run_cli("--help")  # about 2 s on these machines; no pump() of the test's own
        assert call.is_connected  # the INVITE, the 200 and the ACK all went meanwhile
        call.end()
        call.wait_ended(3)
    assert SipStack.live is None
