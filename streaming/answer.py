"""What `StreamSession.ask` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEMO_NOTICE = "[demo model with random weights: this answer is meaningless]"


@dataclass
class Answer:
    question: str
    text: str
    tokens: int  # answer tokens generated
    seconds: float  # question prefill + decoding
    first_token_s: float  # time to the first answer token
    frames_seen: int  # frames ingested when the question was asked
    frames_covered: int  # frames with tokens still in the cache
    meaningless: bool  # True for demo models: random weights
    video_time_s: float  # stream time of the last ingested frame

    @property
    def display(self) -> str:
        """The answer as a person should read it: demo answers carry a notice."""
        return f"{self.text} {DEMO_NOTICE}" if self.meaningless else self.text

    def as_dict(self) -> dict:
        data = asdict(self)
        if self.meaningless:
            data["notice"] = DEMO_NOTICE
        return data
