from models.encoders.base import DemoEncoderConfig, EncoderOutput
from models.encoders.standard import StandardDemoEncoder

__all__ = ["DemoEncoderConfig", "EncoderOutput", "StandardDemoEncoder"]
