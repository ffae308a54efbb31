"""The models as the "Efficient Image Segmentation Using PyTorch" notebook writes them.

Kept independent of edgeseg.compile.nets on purpose: checkpoints saved from these classes are what users
bring, and the tests prove edgeseg loads them unchanged and computes the same outputs.
"""

from torch import nn


class DepthwiseSeparableConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, padding, bias):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size=kernel_size, padding=padding,
                                   groups=in_channels, bias=bias)
        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def conv(dsc, cin, cout, k):
    if dsc:
        return DepthwiseSeparableConv2d(cin, cout, kernel_size=k, padding=k // 2, bias=False)
    return nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2, bias=False)


class DownConv2(nn.Module):
    def __init__(self, chin, chout, kernel_size, dsc):
        super().__init__()
        self.seq = nn.Sequential(
            conv(dsc, chin, chout, kernel_size), nn.BatchNorm2d(chout), nn.ReLU(),
            conv(dsc, chout, chout, kernel_size), nn.BatchNorm2d(chout), nn.ReLU(),
        )
        self.mp = nn.MaxPool2d(kernel_size=2, return_indices=True)

    def forward(self, x):
        y = self.seq(x)
        pool_shape = y.shape
        y, indices = self.mp(y)
        return y, indices, pool_shape


class DownConv3(DownConv2):
    def __init__(self, chin, chout, kernel_size, dsc):
        super().__init__(chin, chout, kernel_size, dsc)
        self.seq = nn.Sequential(
            conv(dsc, chin, chout, kernel_size), nn.BatchNorm2d(chout), nn.ReLU(),
            conv(dsc, chout, chout, kernel_size), nn.BatchNorm2d(chout), nn.ReLU(),
            conv(dsc, chout, chout, kernel_size), nn.BatchNorm2d(chout), nn.ReLU(),
        )


class UpConv2(nn.Module):
    def __init__(self, chin, chout, kernel_size, dsc):
        super().__init__()
        self.seq = nn.Sequential(
            conv(dsc, chin, chin, kernel_size), nn.BatchNorm2d(chin), nn.ReLU(),
            conv(dsc, chin, chout, kernel_size), nn.BatchNorm2d(chout), nn.ReLU(),
        )
        self.mup = nn.MaxUnpool2d(kernel_size=2)

    def forward(self, x, indices, output_size):
        y = self.mup(x, indices, output_size=output_size)
        return self.seq(y)


class UpConv3(UpConv2):
    def __init__(self, chin, chout, kernel_size, dsc):
        super().__init__(chin, chout, kernel_size, dsc)
        self.seq = nn.Sequential(
            conv(dsc, chin, chin, kernel_size), nn.BatchNorm2d(chin), nn.ReLU(),
            conv(dsc, chin, chin, kernel_size), nn.BatchNorm2d(chin), nn.ReLU(),
            conv(dsc, chin, chout, kernel_size), nn.BatchNorm2d(chout), nn.ReLU(),
        )


class ImageSegmentation(nn.Module):
    def __init__(self, kernel_size, dsc):
        super().__init__()
        self.out_channels = 3
        self.bn_input = nn.BatchNorm2d(3)
        self.dc1 = DownConv2(3, 64, kernel_size, dsc)
        self.dc2 = DownConv2(64, 128, kernel_size, dsc)
        self.dc3 = DownConv3(128, 256, kernel_size, dsc)
        self.dc4 = DownConv3(256, 512, kernel_size, dsc)
        self.uc4 = UpConv3(512, 256, kernel_size, dsc)
        self.uc3 = UpConv3(256, 128, kernel_size, dsc)
        self.uc2 = UpConv2(128, 64, kernel_size, dsc)
        self.uc1 = UpConv2(64, 3, kernel_size, dsc)

    def forward(self, batch):
        x = self.bn_input(batch)
        x, mp1_indices, shape1 = self.dc1(x)
        x, mp2_indices, shape2 = self.dc2(x)
        x, mp3_indices, shape3 = self.dc3(x)
        x, mp4_indices, shape4 = self.dc4(x)
        x = self.uc4(x, mp4_indices, output_size=shape4)
        x = self.uc3(x, mp3_indices, output_size=shape3)
        x = self.uc2(x, mp2_indices, output_size=shape2)
        x = self.uc1(x, mp1_indices, output_size=shape1)
        return x
