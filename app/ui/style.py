"""The page's look: Gradio's default theme with system fonts (nothing loads from the internet), and
the style sheet that lays the page out for a phone (at most `PHONE_PX` wide): the chat and the
question box first, the plots one under the other, the numbers as a few labelled lines."""

from __future__ import annotations

import gradio as gr

PHONE_PX = 480

CSS = f"""
#status {{ min-height: 2.5em; }}
#numbers table {{ font-size: 0.9em; width: 100%; border-collapse: collapse; }}
#numbers th, #numbers td {{ padding: 2px 8px; text-align: left; white-space: nowrap; }}
#numbers .numbers-narrow {{ display: none; }}
.field-error {{ color: #c53030; font-size: 0.9em; min-height: 0; }}
.field-error:empty {{ display: none; }}
#memory-note {{ font-size: 0.95em; }}
#policy input, #ingest input {{ padding-right: 28px !important; text-overflow: ellipsis; }}  /* the menu's arrow sits over the right end */
@media (max-width: {PHONE_PX}px) {{
  #main-row {{ flex-direction: column; }}
  #talk-column {{ order: -1; }}
  #main-row > div {{ min-width: 100% !important; width: 100%; }}
  #plots-row {{ flex-direction: column; }}
  #plots-row > div {{ min-width: 100% !important; width: 100%; }}
  #numbers .numbers-wide {{ display: none; }}
  #numbers .numbers-narrow {{ display: block; }}
  #numbers .numbers-line {{ padding: 1px 0; }}
  #question-row {{ flex-wrap: nowrap; }}
  #question-row > * {{ min-width: 0 !important; }}
  #question-row > #ask {{ flex: 0 0 72px !important; }}
  #examples-row {{ flex-direction: column; }}
}}
"""


def theme() -> gr.themes.Base:
    """Gradio's default look with system fonts, so the page loads nothing from the internet."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])
